"""The Ray Train adapter: `train_func` is the `train_loop_per_worker` of the job's `TorchTrainer`.

It gives the Ray-free pieces what Ray provides: the dataset shards, the checkpoint to resume from, `ray.train.report`
for metrics and checkpoints, and the driver's progress board for the lines a person reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from rayrm.config import TrainConfig
from rayrm.progress import post, rate_eta

STATE_FILE = "rayrm_state.json"
DS_TAG = "ds"


def fmt_metrics(metrics: dict[str, float], strip: str = "eval_") -> str:
    return " ".join(f"{k.removeprefix(strip)} {v:.4g}" if isinstance(v, float) and not v.is_integer()
                    else f"{k.removeprefix(strip)} {int(v)}" for k, v in metrics.items())


class MetricSink:
    """Rank-0 metrics to TensorBoard (`<output_dir>/tensorboard`) and, when `train.wandb_project` is set, W&B.
    Other ranks get a sink that does nothing, so the loop calls it unconditionally."""

    def __init__(self, cfg: TrainConfig, rank: int):
        self.tb: Any = None
        self.wandb: Any = None
        if rank != 0:
            return
        if cfg.train.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(cfg.output_dir, "tensorboard", cfg.name))
        if cfg.train.wandb_project:
            import wandb  # optional dependency: pip install wandb

            self.wandb = wandb.init(project=cfg.train.wandb_project, name=cfg.name, config=cfg.model_dump(),
                                    resume="allow")

    def write(self, metrics: dict[str, float], step: int) -> None:
        nums = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(k.replace("eval_", "eval/").replace("train_", "train/"), v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(nums, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def save_checkpoint(engine: Any, rank: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
    """Collective: every rank writes its DeepSpeed shard, then every rank reports (Ray merges the directories)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        if rank == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def resume_state(engine: Any) -> dict[str, int] | None:
    """The loop state of Ray Train's latest checkpoint, with the engine restored from it; None on a fresh start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path, _ = engine.load_checkpoint(d, tag=DS_TAG)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {d} (tag {DS_TAG!r}); refusing to resume untrained")
        with open(os.path.join(d, STATE_FILE)) as f:
            state = json.load(f)
    state["restarts"] += 1
    return state


def train_func(run: dict[str, Any]) -> None:
    """Per-worker entry point. `run`: {"cfg": TrainConfig (paths absolute), "total_steps", "progress": the driver's
    board or None, "on_checkpoint": a hook run on every rank after each periodic checkpoint, or None, "shards":
    {"train": [one object ref per rank], "eval": [...]} when the driver tokenised the data, else None (the rows come
    from Ray Train's dataset shards)}."""
    import ray.train

    from rayrm.batching import column_batches
    from rayrm.metrics import reward_stats, size_weighted_mean
    from rayrm.train.engine import eval_batches, micro_batches, setup_engine, step_loss_for
    from rayrm.train.evaluate import evaluate, global_mean, peak_memory_gib
    from rayrm.train.export import write_export
    from rayrm.train.loop import new_state, train_epochs

    # 1. setup: engine, data, resume point
    cfg: TrainConfig = run["cfg"]
    tr, total = cfg.train, run["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    board = run.get("progress")

    def say(msg: str) -> None:
        if rank == 0:
            post(board, msg)

    if cfg.scaling.torch_threads:
        import torch

        torch.set_num_threads(cfg.scaling.torch_threads)
    engine, tok = setup_engine(cfg, total)
    device = engine.device
    state = resume_state(engine)
    if state is not None:
        say(f"resumed from checkpoint at step {state['step']} (epoch {state['epoch']}, restart {state['restarts']})")
    state = state or new_state()
    shards = run.get("shards")
    columns = {name: ray.get(refs[rank]) for name, refs in shards.items()} if shards is not None else {}
    streams: dict[str, Any] = {}

    def buffers(name: str, size: int) -> Any:
        """This rank's rows of `name` in batches of `size` rows (numpy columns), as Ray Data's iter_batches gives."""
        if name in columns:
            return column_batches(columns[name], size)
        if name not in streams:
            streams[name] = ray.train.get_dataset_shard(name)
        return streams[name].iter_batches(batch_size=size, batch_format="numpy", prefetch_batches=1)

    held_out = eval_batches(buffers("eval", tr.eval_batch_size * 64), cfg, tok, engine.module.pack)

    def batches_of_epoch(epoch: int) -> Any:
        return micro_batches(buffers("train", tr.micro_batch_size * tr.length_group_batches), cfg, tok, epoch, device,
                             engine.module.pack)

    # 2. after each optimizer step: progress line, evaluation, checkpoint
    sink = MetricSink(cfg, rank)
    t_start, start_step = time.perf_counter(), state["step"]
    eval_metrics: dict[str, float] = {}

    def after_step(step: int, stats: Any) -> None:
        nonlocal eval_metrics
        if step % tr.log_every == 0:
            recent = size_weighted_mean(stats.losses[-tr.log_every:], stats.sizes[-tr.log_every:])
            rate = stats.rows * world / stats.seconds
            _, eta = rate_eta(step - start_step, total - start_step, time.perf_counter() - t_start)
            split = " ".join(f"{k} {v:.0%}" for k, v in stats.shares().items())
            lr = engine.get_lr()[0]
            say(f"step {step}/{total} loss {recent:.4f} lr {lr:.2e} {rate:.1f} pairs/s ETA {eta} ({split})")
            sink.write({"train_loss": recent, "train_lr": lr, "train_pairs_per_s": rate}, step)
        do_eval = tr.eval_every and step % tr.eval_every == 0 and step < total
        do_ckpt = tr.checkpoint_every and step % tr.checkpoint_every == 0 and step < total
        if do_eval:
            eval_metrics, _, _ = evaluate(cfg, engine, held_out, device)
            say(f"step {step} held-out " + fmt_metrics(eval_metrics))
            sink.write(eval_metrics, step)
        if do_eval or do_ckpt:
            metrics = {"step": step, "train_loss": global_mean(stats.losses, stats.sizes, device), **eval_metrics}
            if do_ckpt:
                save_checkpoint(engine, rank, state, metrics)
                if run.get("on_checkpoint") is not None:
                    run["on_checkpoint"](step=step, rank=rank, world=world, output_dir=cfg.output_dir)
            else:
                ray.train.report(metrics)

    # 3. the loop
    stats = train_epochs(engine, batches_of_epoch, step_loss_for(cfg), state, tr.epochs, after_step)

    # 4. final evaluation over all ranks, then the export as the final checkpoint
    eval_metrics, values, report_data = evaluate(cfg, engine, held_out, device, final=True)
    peaks = peak_memory_gib(device)
    say("peak memory per worker (GiB, " + ("max allocated" if device.type == "cuda" else "RSS") + "): "
        + ", ".join(f"{x:.2f}" for x in peaks))
    metrics = {
        "step": state["step"],
        "train_loss": global_mean(stats.losses, stats.sizes, device),
        "train_pairs_per_s": stats.rows * world / stats.seconds,
        "train_loop_s": stats.seconds,  # rank 0's loop phases
        "train_loop_wall_s": stats.wall_seconds,  # rank 0's first step start to last step end
        "train_first_batch_s": stats.first_batch_s,  # rank 0's wait for its first micro-batch
        **{f"train_loop_{k}": v for k, v in stats.usage.items()},  # rank 0's process over the loop's wall span
        **{f"train_share_{k}": v for k, v in stats.shares().items()},
        "restarts": state["restarts"],
        "peak_memory_gib": max(peaks),
        **{f"peak_memory_gib_w{i}": x for i, x in enumerate(peaks)},
        **eval_metrics,
    }
    say("final held-out " + fmt_metrics(eval_metrics))
    sink.write(metrics, state["step"])
    sink.close()
    with tempfile.TemporaryDirectory() as tmp:
        meta = write_export(engine, tok, cfg, rank, tmp, metrics, reward_stats(values), report_data)
        ray.train.report({**metrics, "final": 1},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if meta is not None else None)
