"""The training job on the driver: read and check the data, tokenise it (on the driver up to DRIVER_TOKENIZE_ROWS
rows, each worker's share then sent through Ray's object store; else with a Ray Data actor, the workers streaming
their shards), run the `TorchTrainer` whose workers run `rayrm.train.ray_train.train_func`, and copy the final
checkpoint out as `<output_dir>/final`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import numpy as np

from rayrm.config import TrainConfig
from rayrm.errors import UserError
from rayrm.export import ExportMeta
from rayrm.progress import say

# Up to this many rows (train + held-out) are tokenised in the driver process, which has the tokenizer loaded already:
# the work is the same, and a Ray Data actor adds about 5 s per split to start and import transformers. Each worker's
# rows then go to it as one object (`rank_shards`), with no Ray Data pipeline running beside the training loop.
# Larger data goes through the actor and Ray Data's streaming split, so the driver never holds the token ids of a
# large dataset.
DRIVER_TOKENIZE_ROWS = 20_000


# ---------------------------------------------------------------- driver side
def _pad_to_multiple(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Give every row weight 1, then append weight-0 copies so len % k == 0.

    Ray Train splits with `equal=True`, which would otherwise drop the remainder; filler rows keep every
    real row and are masked out of losses and metrics.
    """
    out = [{**r, "weight": 1.0} for r in rows]
    i = 0
    while len(out) % k:
        out.append({**rows[i % len(rows)], "weight": 0.0})
        i += 1
    return out


def _tokenize_here(fn: Any, rows: list[dict[str, Any]], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run a Ray Data batch function over rows in this process -> the columns map_batches would give, one cell per
    row (`rayrm.batching.to_columns`)."""
    from rayrm.batching import to_columns

    return to_columns([fn({k: [r.get(k) for r in rows[i:i + batch_size]] for k in rows[0]})
                       for i in range(0, len(rows), batch_size)])


def rank_shards(cols: dict[str, np.ndarray], world: int) -> list[dict[str, np.ndarray]]:
    """Tokenised columns -> each rank's share, rows rank, rank + world, ... (equal shares: `_pad_to_multiple`)."""
    return [{k: v[rank::world] for k, v in cols.items()} for rank in range(world)]


def prepare_datasets(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read, validate, render and split the preference data; tokenise it (`DRIVER_TOKENIZE_ROWS`).

    Returns ({"train": x, "eval": x}, facts): x is a dict of tokenised numpy columns when the driver tokenised them,
    else a materialised Ray Dataset; facts has row counts, skipped and truncated rows.
    """
    import ray.data

    from rayrm.data import GroupTokenizer, hh_to_messages, read_preferences, read_rows, render_group, split_rows
    from rayrm.losses import PAIRWISE_LOSSES
    from rayrm.model import load_tokenizer
    from rayrm.token_tasks import TokenTaskTokenizer, validate_outcome_row, validate_process_row

    d = cfg.data
    need_margin = cfg.train.loss == "margin"
    ratings = tuple(d.rating_fields) if d.rating_fields else None
    max_k = 2 if cfg.train.loss in PAIRWISE_LOSSES else None

    def read(path: str) -> Any:
        if cfg.task == "reward":
            rows, report = read_preferences(path, d.split, d.on_bad_row, need_margin, ratings, max_k)
            if d.hh_messages:
                rows = [hh_to_messages(r, f"{path}: row {i + 1}") for i, r in enumerate(rows)]
            return rows, report
        return read_rows(path, validate_outcome_row if cfg.task == "orm" else validate_process_row, d.split, d.on_bad_row)

    rows, report = read(d.path)
    if d.max_pairs:
        rows = rows[: d.max_pairs]
    if d.eval_path:
        eval_rows, ev_report = read(d.eval_path)
        report.skipped += ev_report.skipped
        train_rows = rows
    else:
        train_rows, eval_rows = split_rows(rows, d.eval_fraction, d.seed)
    train_rows = train_rows[: d.max_train_pairs]
    if report.skipped:
        say(f"skipped {report.skipped} bad rows (data.on_bad_row=skip); first: {report.errors[:3]}")
    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    world = cfg.scaling.num_workers
    keys = ("prompt", "completions") + (("margin",) if need_margin else ())
    tok_name = _abs_if_local(cfg.tokenizer or cfg.model)
    if cfg.task == "reward":
        fn, kwargs = GroupTokenizer, {"tokenizer_name": tok_name, "max_length": d.max_length,
                                      "trust_remote_code": cfg.trust_remote_code}
    else:
        fn, kwargs = TokenTaskTokenizer, {"task": cfg.task, "tokenizer_name": tok_name, "max_length": d.max_length,
                                          "separator": d.step_separator, "trust_remote_code": cfg.trust_remote_code}

    here = len(train_rows) + len(eval_rows) <= DRIVER_TOKENIZE_ROWS
    local_fn = fn(**kwargs, tokenizer=tok) if here else None
    trunc: dict[str, int] = {}

    def to_ds(name: str, part: list[dict[str, Any]]) -> Any:
        if cfg.task == "reward":  # render on the driver: chat templates, implicit prompts
            part = [{k: v for k, v in render_group(r, tok).items() if k in keys} for r in part]
        part = _pad_to_multiple(part, world)
        if local_fn is not None:
            out = _tokenize_here(local_fn, part)
            trunc[name] = int(out["truncated"].sum())
            return out
        ds = ray.data.from_items(part)
        ds.context.execution_options.preserve_order = True  # same rows in the same order: a seed gives one model
        ds = ds.map_batches(fn, fn_constructor_kwargs=kwargs, batch_size=256,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=0.5).materialize()
        # read the materialised column (Dataset.sum would plan an aggregation with its own shuffle, seconds per call)
        trunc[name] = sum(int(b["truncated"].sum())
                          for b in ds.select_columns(["truncated"]).iter_batches(batch_size=None))
        return ds

    datasets = {"train": to_ds("train", train_rows), "eval": to_ds("eval", eval_rows)}
    facts = {
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "skipped_rows": report.skipped,
        "truncated_train": trunc["train"],
        "truncated_eval": trunc["eval"],
    }
    say(f"data: {facts['train_pairs']:,} train / {facts['eval_pairs']:,} held-out rows; truncated to "
        f"data.max_length={d.max_length}: {facts['truncated_train']:,} train, {facts['truncated_eval']:,} held-out; "
        f"skipped {facts['skipped_rows']:,}")
    return datasets, facts


def ingest_options() -> Any:
    """Ray Data's options for the workers' dataset shards: `DataConfig.default_ingest_options()` without its
    deprecated `exclude_resources` (which logs a deprecation warning in every run), in the same order on every run
    (reproducible training)."""
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True,
                            verbose_progress=current.verbose_progress)


def run_training(cfg: TrainConfig, on_checkpoint: Callable[..., None] | None = None) -> dict[str, Any]:
    """The training job: returns the final metrics and writes the export to <output_dir>/final.

    `on_checkpoint(step=, rank=, world=, output_dir=)`, when given, runs on every worker after each periodic
    checkpoint (it is pickled to the workers): a place to observe the run or, in tests, to fail a worker."""
    import shutil

    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False  # rank-0 `[rayrm]` lines report progress
    output_dir = os.path.abspath(cfg.output_dir)
    data, facts = prepare_datasets(cfg)
    world = cfg.scaling.num_workers
    datasets, shards = data, None
    if isinstance(data["train"], dict):  # tokenised here: each worker's rows as one object in the object store
        datasets, shards = None, {name: [ray.put(s) for s in rank_shards(cols, world)] for name, cols in data.items()}
    rows_per_worker = (facts["train_pairs"] + world - 1) // world
    micro_steps = math.ceil(rows_per_worker / cfg.train.micro_batch_size)
    # DeepSpeed counts micro-steps across epochs; a trailing partial accumulation is not stepped
    total_steps = max(1, cfg.train.epochs * micro_steps // cfg.train.gradient_accumulation_steps)
    # workers get the typed config with absolute paths (they run in another working directory)
    worker_cfg = cfg.model_copy(update={"output_dir": output_dir, "model": _abs_if_local(cfg.model),
                                        "tokenizer": _abs_if_local(cfg.tokenizer) if cfg.tokenizer else None})
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    _guard_run_dir(os.path.join(cfg.storage_path or os.path.join(output_dir, "ray"), cfg.name),
                   {**worker_cfg.model_dump(), "total_steps": total_steps})
    from rayrm.progress import Board
    from rayrm.train.ray_train import train_func

    board = Board.start()  # rank 0's progress lines, printed here once
    run = {"cfg": worker_cfg, "total_steps": total_steps, "progress": board.handle, "on_checkpoint": on_checkpoint,
           "shards": shards}
    trainer = TorchTrainer(
        train_func,
        train_loop_config=run,
        scaling_config=ScalingConfig(num_workers=world, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest_options()),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path or os.path.join(output_dir, "ray"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": {k: str(v) for k, v in cfg.scaling.worker_env.items()}}
            if cfg.scaling.worker_env else None,
        ),
    )
    precision = cfg.deepspeed.precision + (" (bf16 on bf16 GPUs, else fp32)" if cfg.deepspeed.precision == "auto" else "")
    from rayrm.train.engine import zero_stage

    stage = zero_stage(cfg)
    zero = f"ZeRO-{stage}" + (f" (deepspeed.zero_stage={cfg.deepspeed.zero_stage}: one worker has nothing to partition)"
                               if stage != cfg.deepspeed.zero_stage else "")
    say(f"training {total_steps} steps on {world} workers ({zero}, {precision})")
    t0 = time.time()
    # fit() installs a SIGINT handler (Ctrl-C aborts the run) and leaves it in place; it holds the run's controller
    # actor, which then stays alive, idle, until the next fit. Restoring ours lets both go when the run is over.
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        result = trainer.fit()
    finally:
        board.close()
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    wall = time.time() - t0
    if result.error:
        raise result.error
    final = os.path.join(output_dir, "final")
    if os.path.exists(final):
        shutil.rmtree(final)
    result.checkpoint.to_directory(final)
    metrics = {k: v for k, v in result.metrics.items() if k != "final"}
    metrics.update(facts)
    metrics["wall_s"] = wall
    meta = ExportMeta.read(final)
    meta.data = {k: int(v) for k, v in facts.items()}
    meta.wall_s = wall
    meta.write(final)
    return metrics


def _guard_run_dir(run_dir: str, loop_config: dict[str, Any]) -> None:
    """Ray Train resumes any run found at storage_path/name. Allow that only for the same config (a rerun after a
    crash); a different config there would silently continue someone else's checkpoint, so refuse it."""
    if "://" in run_dir:
        return  # remote storage: left to the user
    keep = {k: v for k, v in loop_config.items() if k not in ("train", "output_dir", "storage_path")}
    keep["train"] = {k: v for k, v in loop_config["train"].items() if k not in ("max_failures", "log_every")}
    fingerprint = json.dumps(keep, sort_keys=True, default=str)
    path = os.path.join(run_dir, "rayrm_run_config.json")
    if os.path.exists(path):
        with open(path) as f:
            if f.read() != fingerprint:
                raise UserError(
                    f"{run_dir} holds a Ray Train run with a different config, which Ray would resume from; "
                    "choose another `name` or `output_dir`/`storage_path`, or delete that directory"
                )
        say(f"resuming the run in {run_dir} (same config)")
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(fingerprint)


def _abs_if_local(name: str) -> str:
    return os.path.abspath(name) if os.path.exists(name) else name
