"""The per-worker training loop in this process, without Ray: a one-rank gloo group, the job's split, rendering,
tokenisation and sorting buffers built without Ray Data. For checking the Ray Train job against (same seed, same loss
curve to 1e-4; tests/test_loop.py) and for timing the loop with nothing around it (bench/ray_tax_bench.py)."""

from __future__ import annotations

import math
import os
import socket
from typing import Any, Callable

import numpy as np
import torch

from rayrm.config import TrainConfig
from rayrm.train.loop import LoopStats


def local_buffers(cfg: TrainConfig) -> tuple[list[dict[str, np.ndarray]], int]:
    """The training rows tokenised and cut into sorting buffers as the job's one Ray Train worker receives them
    (same split, rendering, tokenizer and buffer size). -> (buffers, train rows)."""
    from rayrm.batching import column_batches, to_columns
    from rayrm.data import GroupTokenizer, hh_to_messages, read_preferences, render_group, split_rows
    from rayrm.model import load_tokenizer

    rows, _ = read_preferences(cfg.data.path)
    if cfg.data.hh_messages:
        rows = [hh_to_messages(r, f"{cfg.data.path}: row {i + 1}") for i, r in enumerate(rows)]
    train_rows = split_rows(rows, cfg.data.eval_fraction, cfg.data.seed)[0][: cfg.data.max_train_pairs]
    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    rendered = [{k: v for k, v in render_group(r, tok).items() if k in ("prompt", "completions")} for r in train_rows]
    out = GroupTokenizer(cfg.tokenizer or cfg.model, cfg.data.max_length)(
        {"prompt": np.array([r["prompt"] for r in rendered], dtype=object),
         "completions": np.array([r["completions"] for r in rendered], dtype=object),
         "weight": np.ones(len(rendered), np.float32)})
    size = cfg.train.micro_batch_size * cfg.train.length_group_batches
    return list(column_batches(to_columns([out]), size)), len(rendered)


def one_rank_group() -> None:
    """A gloo process group of this process alone (DeepSpeed needs one; it keeps it for the process's life)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)


def train_local(cfg: TrainConfig, probe: Callable[[Any, Any, list], float] | None = None
                ) -> tuple[list[float], LoopStats, dict[str, int], tuple[float, float] | None]:
    """Train one worker's share in this process -> (loss per optimizer step, stats, final state, probe before/after).

    `probe(engine, tok, buffers)`, when given, runs before and after training (e.g. the training-set loss)."""
    from rayrm.train.engine import micro_batches, setup_engine, step_loss_for
    from rayrm.train.loop import new_state, train_epochs

    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    buffers, n_train = local_buffers(cfg)
    total = math.ceil(n_train / cfg.train.micro_batch_size)  # as the driver computes it for one worker
    one_rank_group()
    try:
        engine, tok = setup_engine(cfg, total)
        loss = step_loss_for(cfg)
        before = probe(engine, tok, buffers) if probe else None
        curve: list[float] = []
        state = new_state()
        stats = train_epochs(engine,
                             lambda epoch: micro_batches(buffers, cfg, tok, epoch, engine.device, engine.module.pack),
                             loss, state, cfg.train.epochs, after_step=lambda step, st: curve.append(st.losses[-1]))
        after = probe(engine, tok, buffers) if probe else None
    finally:
        torch.distributed.destroy_process_group()
    return curve, stats, state, None if probe is None else (before, after)
