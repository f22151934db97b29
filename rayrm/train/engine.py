"""What one training worker builds, without Ray: the model and its DeepSpeed engine, the loss of a micro-batch for
each task, and the micro-batches themselves (length-grouped buffers, collated).

The Ray Train adapter (`rayrm.train.ray_train`) and a plain process (tests, profiling) use the same functions, so
the loop they drive computes the same thing in both.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch

from rayrm.config import TrainConfig

DEFAULT_AGGREGATE = {"orm": "mean", "prm": "min"}


class TokenModule(torch.nn.Module):
    """Wraps an HF token classifier (ORM/PRM) so the engine's forward is its logits: (b, s) -> (b, s[, C])."""

    def __init__(self, model: torch.nn.Module, cpu_autocast: bool = False):
        super().__init__()
        self.model = model
        self.cpu_autocast = cpu_autocast  # bf16 autocast (a CPU's bf16 training: weights and loss stay fp32)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


class RewardModule(torch.nn.Module):
    """Wraps the HF classifier so the DeepSpeed engine's forward is the reward read-out: (b, s) -> (b,)."""

    def __init__(self, model: torch.nn.Module, max_chunks: int = 1, cpu_autocast: bool = False):
        super().__init__()
        self.model = model
        self.max_chunks = max_chunks  # forwards per batch, rows grouped by length (rayrm.model.chunked_rewards)
        self.cpu_autocast = cpu_autocast  # bf16 autocast (a CPU's bf16 training: weights and loss stay fp32)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last: torch.Tensor | None = None,
        cu_seq_lens: torch.Tensor | None = None,
        max_length: torch.Tensor | None = None,
        seq_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A padded batch (input_ids, attention_mask) or packed rows (`rayrm.batching.pack_sequences`) -> (n,)."""
        from rayrm.model import chunked_rewards, packed_rewards

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
            if attention_mask is None:
                r = packed_rewards(self.model, input_ids, position_ids, last, cu_seq_lens, max_length, seq_len)
            else:
                r = chunked_rewards(self.model, input_ids, attention_mask, self.max_chunks)
        return r.float()


def on_gpu(cfg: TrainConfig) -> bool:
    """This worker trains on a GPU: asked for (scaling.use_gpu) and present."""
    return cfg.scaling.use_gpu and torch.cuda.is_available()


def packing(cfg: TrainConfig, model: Any) -> str:
    """train.packing resolved for this worker's model and device: "off" or "row" (`rayrm.batching.
    pack_sequences`). `auto` is "row" on a CPU for models `rayrm.model.can_pack` packs: one packed row, attention per
    sequence, measured faster there than length-grouped padded forwards (bench/packing_bench.py); off on a GPU, where
    it has not been measured. `on` is "row" everywhere (on a GPU in bf16 the flash varlen kernel). Scalar reward
    models only; a ConfigError for `on` with a model or task it cannot pack."""
    from rayrm.config import ConfigError
    from rayrm.model import can_pack

    mode = cfg.train.packing
    if mode == "off":
        return "off"
    if cfg.task != "reward":
        if mode == "on":
            raise ConfigError(f"train.packing=on is for scalar reward models; task {cfg.task} trains a token "
                              "classifier: set train.packing=off")
        return "off"
    if not can_pack(model):
        if mode == "on":
            raise ConfigError(f"train.packing=on packs decoders and BERT encoders; {cfg.model} is "
                              f"{type(model).__name__}: set train.packing=off")
        return "off"
    return "off" if mode == "auto" and on_gpu(cfg) else "row"


def resolved_precision(cfg: TrainConfig) -> str:
    """deepspeed.precision with `auto` resolved for this worker's device (rayrm.hardware.training_precision)."""
    from rayrm.hardware import training_precision

    return training_precision(cfg.deepspeed.precision, "cuda" if on_gpu(cfg) else "cpu")


def zero_stage(cfg: TrainConfig) -> int:
    """The ZeRO stage DeepSpeed runs: deepspeed.zero_stage, except that stages 1-2 on one worker without optimizer
    offload run as stage 0. One rank has nothing to partition, and stage 2's gradient buckets and flat fp32 copies
    cost time and memory for nothing (with fused AdamW, about 5% of the loop on a 2-core CPU: docs/benchmarks.md)."""
    ds = cfg.deepspeed
    if ds.zero_stage in (1, 2) and cfg.scaling.num_workers == 1 and not ds.offload_optimizer:
        return 0
    return ds.zero_stage


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed JSON config of a training config."""
    ds, tr = cfg.deepspeed, cfg.train
    zero: dict[str, Any] = {"stage": zero_stage(cfg)}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer and ds.zero_stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_param and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        # a GPU's bf16 is DeepSpeed's bf16 mode; a CPU's is autocast in the module (RewardModule.cpu_autocast)
        "bf16": {"enabled": resolved_precision(cfg) == "bf16" and on_gpu(cfg)},
        "zero_force_ds_cpu_optimizer": False,  # our torch AdamW also runs with CPU offload (DeepSpeedCPUAdam needs a build)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def setup_engine(cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """Tokenizer + model wrapped in a DeepSpeed engine with AdamW and linear warmup/decay -> (engine, tokenizer).

    Needs an initialised torch.distributed process group (Ray Train sets one up; a plain process can init gloo)."""
    import deepspeed

    from rayrm.config import ConfigError
    from rayrm.model import (disable_dropout, is_decoder, load_reward_model, load_token_model, load_tokenizer,
                             use_varlen_attention)

    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code, cfg.padding_side)
    cpu_autocast = resolved_precision(cfg) == "bf16" and not on_gpu(cfg)
    if cfg.task == "reward":
        model = load_reward_model(cfg.model, tok, cfg.trust_remote_code, seed=cfg.train.seed)
        # ZeRO-3 gathers parameters in every forward, so every rank must run the same number: one per batch there
        chunks = 1 if cfg.deepspeed.zero_stage == 3 else cfg.train.forward_chunks
        module: torch.nn.Module = RewardModule(model, chunks, cpu_autocast)
        if not is_decoder(model):
            tok.padding_side = "right"  # encoder poolers read position 0
    else:  # token-level heads: right padding, so causal decoders need no position fix-up
        model = load_token_model(cfg.model, tok, 1 if cfg.task == "orm" else 3, cfg.trust_remote_code,
                                 seed=cfg.train.seed)
        module = TokenModule(model, cpu_autocast)
        tok.padding_side = "right"
    module.pack = packing(cfg, model)  # the micro-batches' layout (`micro_batches`, `eval_batches`)
    if module.pack == "row":
        use_varlen_attention(model)
    if cfg.train.disable_dropout:
        disable_dropout(model)
    module.lora_info = None  # what rayrm.json records of LoRA (rayrm.lora.apply_lora), when r > 0
    if cfg.lora.r:
        from rayrm.lora import apply_lora

        try:
            module.lora_info = apply_lora(model, cfg.lora)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    o = cfg.optim
    gpu = on_gpu(cfg)
    if gpu:
        from rayrm.model import fast_gpu_attention

        fast_gpu_attention()
    # fused AdamW (GPU and CPU kernels): one pass over each tensor instead of the for-each path's several
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters and the head
    opt = torch.optim.AdamW(trainable, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
    warmup = max(1, int(total_steps * o.warmup_ratio))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    engine, *_ = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(cfg),
                                      dist_init_required=False)
    return engine, tok


# ---------------------------------------------------------------- the loss of one micro-batch, per task
def device_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


MODEL_INPUTS = ("input_ids", "attention_mask")
PACKED_INPUTS = ("input_ids", "position_ids", "last", "cu_seq_lens", "max_length", "seq_len")


def group_scores(engine: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward over every completion of every group -> scores (g, K) in fp32, best first (0 where masked)."""
    keys = MODEL_INPUTS if "attention_mask" in batch else PACKED_INPUTS
    r = engine(**{k: batch[k] for k in keys}).float()  # (n_seq,)
    return r[batch["index"].clamp(min=0)] * batch["group_mask"]


StepLoss = Callable[[Any, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def step_loss_for(cfg: TrainConfig) -> StepLoss:
    """(engine, batch, weight (g,)) -> the micro-batch's loss, for the config's task (looked up once, not per step)."""
    from rayrm.losses import LOSSES, centering_penalty, step_ce_loss, token_bce_loss

    if cfg.task == "orm":
        return lambda engine, b, w: token_bce_loss(engine(b["input_ids"], b["attention_mask"]), b["labels"], w)
    if cfg.task == "prm":
        return lambda engine, b, w: step_ce_loss(engine(b["input_ids"], b["attention_mask"]), b["labels"], w)
    group_loss, center = LOSSES[cfg.train.loss], cfg.train.center_coef

    def reward_loss(engine: Any, b: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        scores = group_scores(engine, b)  # (g, K) best first
        loss = group_loss(scores, b["group_mask"], w, b["margin"])
        if center:
            loss = loss + centering_penalty(scores[:, 0], scores[:, 1], center, w)
        return loss

    return reward_loss


# ---------------------------------------------------------------- micro-batches
def collate(task: str, b: dict[str, Any], tok: Any, pack: str = "off") -> dict[str, torch.Tensor]:
    """Tokenised rows (a Ray Data numpy batch) -> the forward batch of the task (`pack`: see `packing`)."""
    from rayrm.data import collate_groups
    from rayrm.token_tasks import collate_tokens

    if task == "reward":
        return collate_groups(b, tok.pad_token_id, tok.padding_side, pack)
    return collate_tokens(b, tok.pad_token_id)


def micro_batches(buffers: Iterable[dict[str, Any]], cfg: TrainConfig, tok: Any, epoch: int,
                  device: torch.device, pack: str = "off") -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Buffers of `train.length_group_batches` micro-batches of tokenised rows -> (batch on device, row weights (g,)),
    length-grouped inside each buffer and in a seeded order per epoch; `pack`: the engine module's layout
    (`packing`)."""
    from rayrm.batching import length_grouped

    tr = cfg.train
    for b in length_grouped(iter(buffers), tr.micro_batch_size, tr.seed + epoch, tr.group_by_length):
        weight = torch.tensor(b["weight"], dtype=torch.float32, device=device)
        yield device_batch(collate(cfg.task, b, tok, pack), device), weight


def eval_batches(buffers: Iterable[dict[str, Any]], cfg: TrainConfig, tok: Any,
                 pack: str = "off") -> list[dict[str, torch.Tensor]]:
    """A rank's held-out rows as length-grouped batches of `train.eval_batch_size`, in memory (re-used each eval)."""
    from rayrm.batching import length_grouped

    out = []
    for b in length_grouped(iter(buffers), cfg.train.eval_batch_size, 0):
        batch = collate(cfg.task, b, tok, pack)
        batch["weight"] = torch.tensor(b["weight"], dtype=torch.float32)
        out.append(batch)
    return out
