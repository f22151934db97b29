"""Failures the tests inject into real runs through the hooks rayrm offers (`run_training(on_checkpoint=...)`,
`run_scoring(before_write=...)`), so production code carries no test branches or sleeps.

    python tests/faults.py kill-scoring-after N --config configs/score/default.yaml model=... input=... output=...

runs the scoring job in this process and SIGKILLs it (the driver) once N shards are written, as a crash would.
"""

import os
import signal
import sys
import time


class ExitAfterCheckpoint:
    """`on_checkpoint` hook: after the checkpoint of `step` the last rank exits hard, once per output dir.

    Ray Train's controller collects reported checkpoints on a ~2 s poll, so every rank waits at a barrier and then a
    few seconds before the exit; a marker file in output_dir makes it happen on the first attempt only.
    """

    def __init__(self, step: int):
        self.step = step

    def __call__(self, step: int, rank: int, world: int, output_dir: str) -> None:
        if step != self.step:
            return
        import torch.distributed as dist

        marker = os.path.join(output_dir, ".fault_injected")
        dist.barrier()
        time.sleep(5)
        if rank == world - 1 and not os.path.exists(marker):
            os.makedirs(output_dir, exist_ok=True)
            open(marker, "w").close()
            print(f"fault injection: rank {rank} exits hard at step {step}", flush=True)
            os._exit(1)


class KillDriverAfterShards:
    """`before_write` hook: once `n` shards exist, SIGKILL the driver and fail this task without writing (the job's
    tasks can outlive the driver for a moment, and must not finish the job)."""

    def __init__(self, driver_pid: int, n: int):
        self.driver_pid, self.n = driver_pid, n

    def __call__(self, output: str) -> None:
        from rayrm.score import shard_files

        if len(shard_files(output)) >= self.n:
            try:
                os.kill(self.driver_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise RuntimeError("the driver was killed on purpose")


if __name__ != "__main__":  # imported by tests: workers get these classes by value, tests/ is not on their path
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

if __name__ == "__main__" and sys.argv[1:2] == ["kill-scoring-after"]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rayrm.config import ScoreConfig, load_config
    from rayrm.score import run_scoring

    n, args = int(sys.argv[2]), sys.argv[3:]
    path = args[args.index("--config") + 1] if "--config" in args else None
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    run_scoring(load_config(path, overrides, ScoreConfig), before_write=KillDriverAfterShards(os.getpid(), n))
