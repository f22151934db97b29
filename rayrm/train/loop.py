"""The per-worker training loop, without Ray: micro-batches in, optimizer steps out.

    stats = train_epochs(engine, batches_of_epoch, step_loss, state, epochs=1, after_step=...)

`engine` is a DeepSpeed engine (or anything with its `backward`, `step` and `is_gradient_accumulation_boundary`),
`batches_of_epoch(epoch)` yields (batch, row weights) pairs, `step_loss(engine, batch, weights)` is the micro-batch's
loss (`rayrm.train.engine.step_loss_for`). `after_step(step, stats)` runs after each optimizer step: progress lines,
evaluation and checkpoints happen there, and its time is not loop time. `state` (epoch, micro_step, step) is the
resume point a checkpoint stores; the loop fast-forwards past micro-batches it already trained on.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

PHASES = ("data", "forward", "backward", "optimizer")


@dataclass
class LoopStats:
    """What the loop measured on this worker: per micro-batch loss and real rows, and seconds by phase."""

    losses: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    rows: int = 0  # real rows (pairs, rankings, solutions) trained on; weight-0 fillers excluded
    phase: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    started: float | None = None  # perf_counter when the first micro-batch was in hand (as a Trainer's on_step_begin)
    first_batch_s: float = 0.0  # waiting for that first micro-batch (starting the data stream): not loop time
    ended: float | None = None  # ... when the last optimizer step ended
    usage: dict[str, float] = field(default_factory=dict)  # this process's resource use over that span (`usage_now`)

    @property
    def wall_seconds(self) -> float:
        """Wall time from the first step's start to the last step's end (as a Trainer callback times a loop):
        loop time plus whatever ran between steps (progress lines; evaluations and checkpoints when on)."""
        return max(1e-9, (self.ended or 0.0) - (self.started or 0.0))

    @property
    def seconds(self) -> float:
        """Loop time: the sum of the phases (evaluations, checkpoints and logging excluded)."""
        return max(1e-9, sum(self.phase.values()))

    def shares(self) -> dict[str, float]:
        return {k: v / self.seconds for k, v in self.phase.items()}


def usage_now() -> dict[str, float]:
    """This process's CPU seconds (all threads, user + system), minor page faults and involuntary context switches
    so far: over the loop's span they tell a starved loop (CPU seconds short of threads x wall seconds, preemptions)
    from a slow one (more CPU seconds or page faults for the same work)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": u.ru_utime + u.ru_stime, "minor_faults": u.ru_minflt, "preemptions": u.ru_nivcsw}


def new_state() -> dict[str, int]:
    return {"epoch": 0, "micro_step": 0, "step": 0, "restarts": 0}


def train_epochs(
    engine: Any,
    batches_of_epoch: Callable[[int], Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]],
    step_loss: Callable[[Any, dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    state: dict[str, int],
    epochs: int,
    after_step: Callable[[int, LoopStats], None] | None = None,
) -> LoopStats:
    """Train from `state` to the end of `epochs`; DeepSpeed steps the optimizer every gradient_accumulation_steps
    micro-batches. Updates `state` in place and returns this worker's stats."""
    stats = LoopStats()
    usage0: dict[str, float] = {}
    while state["epoch"] < epochs:
        t_last = time.perf_counter()
        for micro, (batch, weight) in enumerate(batches_of_epoch(state["epoch"])):
            if micro < state["micro_step"]:
                continue  # fast-forward after a restart
            # 1. one micro-batch: forward, backward, (at a boundary) the optimizer step, each timed
            boundary = engine.is_gradient_accumulation_boundary()  # this micro-batch completes an optimizer step
            t_data = time.perf_counter()
            if stats.started is None:  # the loop clock starts with the first micro-batch in hand
                stats.first_batch_s = t_data - t_last
                stats.started = t_last = t_data
                usage0 = usage_now()
            loss = step_loss(engine, batch, weight)
            t_fwd = time.perf_counter()
            engine.backward(loss)
            t_bwd = time.perf_counter()
            engine.step()
            stats.losses.append(loss.item())  # on a GPU this waits for the queued kernels: the split there is host time
            t_end = time.perf_counter()
            for k, (a, z) in zip(PHASES, ((t_last, t_data), (t_data, t_fwd), (t_fwd, t_bwd), (t_bwd, t_end))):
                stats.phase[k] += z - a
            t_last = t_end
            n_real = int(weight.sum())
            stats.sizes.append(n_real)
            stats.rows += n_real
            state["micro_step"] = micro + 1
            if not boundary:
                continue
            # 2. an optimizer step is done: the caller's progress, evaluation and checkpoint, outside loop time
            stats.ended = t_end
            stats.usage = {k: v - usage0[k] for k, v in usage_now().items()}
            state["step"] += 1
            if after_step is not None:
                after_step(state["step"], stats)
            t_last = time.perf_counter()
        state["epoch"] += 1
        state["micro_step"] = 0
    return stats
