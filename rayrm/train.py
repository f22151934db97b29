"""Reward-model training: a Ray Train `TorchTrainer` whose workers each run a DeepSpeed engine.

`run_training(cfg)` is the whole job: read and validate data on the driver, tokenise it with Ray Data, shard it across
workers, train with the per-worker loop `train_loop`, evaluate on the held-out split, checkpoint, export.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from rayrm.config import TrainConfig, to_dict
from rayrm.errors import UserError

STATE_FILE = "rayrm_state.json"
DS_TAG = "ds"


_BOARD: Any = None  # inside a Train worker: the driver's progress board (rayrm.progress), set by train_loop


def log(msg: str) -> None:
    """One line per job: from rank 0 inside Ray Train (through the driver's board, so it is printed once and without
    Ray's worker prefix), always outside it."""
    import ray.train

    from rayrm.progress import post

    try:
        rank = ray.train.get_context().get_world_rank()
    except Exception:  # not inside a Train worker
        rank = 0
    if rank == 0:
        post(_BOARD, msg)


def _fmt_metrics(metrics: dict[str, float], strip: str = "eval_") -> str:
    return " ".join(f"{k.removeprefix(strip)} {v:.4g}" if isinstance(v, float) and not v.is_integer()
                    else f"{k.removeprefix(strip)} {int(v)}" for k, v in metrics.items())


class MetricSink:
    """Rank-0 metrics to TensorBoard (`<output_dir>/tensorboard`) and, when `train.wandb_project` is set, W&B.
    Other ranks get a sink that does nothing, so the loop calls it unconditionally."""

    def __init__(self, c: dict[str, Any], rank: int):
        self.tb: Any = None
        self.wandb: Any = None
        if rank != 0:
            return
        tr = c["train"]
        if tr.get("tensorboard", True):
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(c["output_dir"], "tensorboard", c["name"]))
        if tr.get("wandb_project"):
            import wandb  # optional dependency: pip install wandb

            self.wandb = wandb.init(project=tr["wandb_project"], name=c["name"], config=c, resume="allow")

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


# ---------------------------------------------------------------- per-worker pieces
class TokenModule(torch.nn.Module):
    """Wraps an HF token classifier (ORM/PRM) so the engine's forward is its logits: (b, s) -> (b, s[, C])."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


class RewardModule(torch.nn.Module):
    """Wraps the HF classifier so the DeepSpeed engine's forward is the reward read-out: (b, s) -> (b,)."""

    def __init__(self, model: torch.nn.Module, max_chunks: int = 1):
        super().__init__()
        self.model = model
        self.max_chunks = max_chunks  # forwards per batch, rows grouped by length (rayrm.model.chunked_rewards)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from rayrm.model import chunked_rewards

        return chunked_rewards(self.model, input_ids, attention_mask, self.max_chunks)


def deepspeed_config(c: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed JSON config from the loop config."""
    ds, tr = c["deepspeed"], c["train"]
    zero: dict[str, Any] = {"stage": ds["zero_stage"]}
    if ds["zero_stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds["offload_optimizer"] and ds["zero_stage"] >= 2:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": tr["micro_batch_size"],
        "gradient_accumulation_steps": tr["gradient_accumulation_steps"],
        "gradient_clipping": ds["gradient_clipping"],
        "zero_optimization": zero,
        "bf16": {"enabled": ds["precision"] == "bf16"},
        "zero_force_ds_cpu_optimizer": False,  # our torch AdamW also runs with CPU offload (DeepSpeedCPUAdam needs a build)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _setup_engine(c: dict[str, Any], total_steps: int) -> tuple[Any, Any]:
    """Load tokenizer + model, wrap in a DeepSpeed engine with AdamW and linear warmup/decay."""
    import deepspeed

    from rayrm.model import is_decoder, load_reward_model, load_token_model, load_tokenizer

    tok = load_tokenizer(c["tokenizer"] or c["model"], c["trust_remote_code"], c["padding_side"])
    if c["task"] == "reward":
        model = load_reward_model(c["model"], tok, c["trust_remote_code"], seed=c["train"]["seed"])
        # ZeRO-3 gathers parameters in every forward, so every rank must run the same number: one per batch there
        chunks = 1 if c["deepspeed"]["zero_stage"] == 3 else c["train"]["forward_chunks"]
        module: torch.nn.Module = RewardModule(model, chunks)
        if not is_decoder(model):
            tok.padding_side = "right"  # encoder poolers read position 0
    else:  # token-level heads: right padding, so causal decoders need no position fix-up
        num_labels = 1 if c["task"] == "orm" else 3
        model = load_token_model(c["model"], tok, num_labels, c["trust_remote_code"], seed=c["train"]["seed"])
        module = TokenModule(model)
        tok.padding_side = "right"
    if c["train"]["disable_dropout"]:
        from rayrm.model import disable_dropout

        disable_dropout(model)
    o = c["optim"]
    gpu = bool(c["scaling"]["use_gpu"]) and torch.cuda.is_available()
    if gpu:
        from rayrm.model import fast_gpu_attention

        fast_gpu_attention()
    # fused AdamW on GPU: one kernel for all tensors (the for-each path is a large share of a small model's step)
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"],
                            fused=gpu or None)
    warmup = max(1, int(total_steps * o["warmup_ratio"]))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    engine, *_ = deepspeed.initialize(
        model=module, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(c), dist_init_required=False
    )
    return engine, tok


def _device_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _scores(engine: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward over every completion of every group -> scores (g, K) in fp32, best first (0 where masked)."""
    r = engine(batch["input_ids"], batch["attention_mask"]).float()  # (n_seq,)
    return r[batch["index"].clamp(min=0)] * batch["group_mask"]


def group_pairs(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ordered pair (better, worse) of every group: (r_better, r_worse, group of the pair). Pairs: (r_c, r_r)."""
    kk = scores.shape[1]
    i, j = torch.triu_indices(kk, kk, offset=1)
    ok = mask[:, i] & mask[:, j]  # (g, P)
    g = torch.arange(scores.shape[0]).unsqueeze(1).expand_as(ok)
    return scores[:, i][ok], scores[:, j][ok], g[ok]


def evaluate(
    engine: Any, batches: list[dict[str, torch.Tensor]], device: torch.device
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out metrics over every rank's eval batches (gathered, filler rows dropped); identical on all ranks.

    Every rank runs the same number of forwards (shards are equal-sized), which ZeRO-3's collectives need.
    Returns (metrics, r_better, r_worse, pair length in tokens (the longer sequence)) over every ordered pair of the
    whole eval split; for preference pairs these are (r_chosen, r_rejected).
    """
    import torch.distributed as dist

    from rayrm.metrics import preference_metrics

    engine.eval()
    rc, rr, ln = [], [], []
    with torch.no_grad():
        for batch in batches:
            scores = _scores(engine, _device_batch(batch, device)).cpu()
            keep = batch["weight"] > 0  # filler groups count in no metric
            mask = batch["group_mask"][keep]
            c, r, _ = group_pairs(scores[keep], mask)
            seq_len = batch["attention_mask"].sum(-1)[batch["index"].clamp(min=0)][keep].float()  # (g, K)
            lc, lr, _ = group_pairs(seq_len, mask)
            rc.append(c)
            rr.append(r)
            ln.append(torch.maximum(lc, lr))
    engine.train()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (torch.cat(rc), torch.cat(rr), torch.cat(ln)))
    r_c, r_r, lengths = (torch.cat([g[k] for g in gathered]) for k in range(3))
    return {f"eval_{k}": v for k, v in preference_metrics(r_c, r_r).items()}, r_c, r_r, lengths


def evaluate_tokens(
    engine: Any, batches: list[dict[str, torch.Tensor]], device: torch.device, task: str, aggregate: str
) -> tuple[dict[str, float], torch.Tensor]:
    """ORM/PRM held-out metrics over every rank: token (ORM) or step (PRM) loss and accuracy, and per solution the
    aggregate probability of being correct: its AUROC against the solution's label, accuracy at 0.5, mean.
    Returns (metrics, aggregate scores of all held-out solutions)."""
    import torch.distributed as dist

    from rayrm.losses import IGNORE, step_ce_loss, token_bce_loss
    from rayrm.metrics import aggregate_scores, roc_auc
    from rayrm.token_tasks import token_probabilities

    engine.eval()
    loss_sum, n_lab, n_right, aggs, targets = 0.0, 0, 0, [], []
    with torch.no_grad():
        for batch in batches:
            b = _device_batch(batch, device)
            keep = b["weight"] > 0
            logits = engine(b["input_ids"], b["attention_mask"]).float()[keep]
            labels = b["labels"][keep]
            lab = labels != IGNORE
            k = int(lab.sum())
            if k:
                loss_fn = token_bce_loss if task == "orm" else step_ce_loss
                loss_sum += float(loss_fn(logits, labels)) * k
                pred = (logits > 0).long() if task == "orm" else logits.argmax(-1)
                n_right += int((pred == labels)[lab].sum())
                n_lab += k
            aggs.append(aggregate_scores(token_probabilities(logits, task), lab, aggregate).cpu())
            targets.append(b["target"][keep].cpu())
    engine.train()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (loss_sum, n_lab, n_right, torch.cat(aggs), torch.cat(targets)))
    n = sum(g[1] for g in gathered)
    agg = torch.cat([g[3] for g in gathered])
    target = torch.cat([g[4] for g in gathered])
    metrics = {
        "eval_loss": sum(g[0] for g in gathered) / max(1, n),
        "eval_token_accuracy": sum(g[2] for g in gathered) / max(1, n),
        "eval_auroc": roc_auc(agg, target),
        "eval_accuracy": float(((agg >= 0.5).float() == target).float().mean()),
        "eval_score_mean": float(agg.mean()),
        "eval_num_solutions": float(agg.numel()),
    }
    return metrics, agg


def _reward_step(engine: Any, batch: dict[str, torch.Tensor], weight: torch.Tensor, tr: dict[str, Any]) -> torch.Tensor:
    """Scalar RM: one forward over every completion of every group, the configured group loss (+ centering)."""
    from rayrm.losses import LOSSES, centering_penalty

    scores = _scores(engine, batch)  # (g, K) best first
    loss = LOSSES[tr["loss"]](scores, batch["group_mask"], weight, batch["margin"])
    if tr["center_coef"]:
        loss = loss + centering_penalty(scores[:, 0], scores[:, 1], tr["center_coef"], weight)
    return loss


def _orm_step(engine: Any, batch: dict[str, torch.Tensor], weight: torch.Tensor, tr: dict[str, Any]) -> torch.Tensor:
    from rayrm.losses import token_bce_loss

    return token_bce_loss(engine(batch["input_ids"], batch["attention_mask"]), batch["labels"], weight)


def _prm_step(engine: Any, batch: dict[str, torch.Tensor], weight: torch.Tensor, tr: dict[str, Any]) -> torch.Tensor:
    from rayrm.losses import step_ce_loss

    return step_ce_loss(engine(batch["input_ids"], batch["attention_mask"]), batch["labels"], weight)


def _collate(task: str, b: dict[str, Any], tok: Any) -> dict[str, torch.Tensor]:
    from rayrm.data import collate_groups
    from rayrm.token_tasks import collate_tokens

    if task == "reward":
        return collate_groups(b, tok.pad_token_id, tok.padding_side)
    return collate_tokens(b, tok.pad_token_id)


# task -> its loss on one micro-batch; the loop looks it up once
TASK_STEPS = {"reward": _reward_step, "orm": _orm_step, "prm": _prm_step}
DEFAULT_AGGREGATE = {"orm": "mean", "prm": "min"}


def _evaluate(
    c: dict[str, Any], engine: Any, batches: list[dict[str, torch.Tensor]], device: torch.device, final: bool = False
) -> tuple[dict[str, float], torch.Tensor]:
    """Held-out metrics for the job's task and the values whose mean/std become the normalisation stats. At the
    final evaluation of a scalar RM with `train.calibrate`, also the temperature T that calibrates
    sigmoid((r_c - r_r) / T) on the held-out pairs and the ECE after it."""
    if c["task"] == "reward":
        from rayrm.metrics import fit_temperature, pair_ece

        metrics, r_c, r_r, lengths = evaluate(engine, batches, device)
        if final and c["train"].get("calibrate", True):
            t = fit_temperature(r_c, r_r)
            metrics["eval_temperature"] = t
            metrics["eval_ece_calibrated"] = pair_ece(r_c / t, r_r / t)
        if final:
            metrics["_report"] = (r_c, r_r, lengths)  # popped by the loop: the end-of-training eval report
        return metrics, torch.cat([r_c, r_r])
    return evaluate_tokens(engine, batches, device, c["task"], c["train"]["aggregate"] or DEFAULT_AGGREGATE[c["task"]])


def _save_checkpoint(engine: Any, state: dict[str, Any], metrics: dict[str, float]) -> None:
    """Collective: every rank writes its DeepSpeed shard, then every rank reports (Ray merges the directories)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        if ray.train.get_context().get_world_rank() == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _export(
    engine: Any, tok: Any, c: dict[str, Any], metrics: dict[str, float], stats: dict[str, float], report_data: Any = None
) -> None:
    """Gather full weights (ZeRO-3 shards them), write the HF export on rank 0 (with the eval report under
    `report/`: accuracy by length bucket, reliability diagram, reward histograms; PNG + JSON) and report it as the
    final checkpoint."""
    import deepspeed
    import ray.train

    from rayrm.model import is_decoder, save_export

    rank = ray.train.get_context().get_world_rank()
    model = engine.module.model
    params = list(model.parameters())
    state_dict = None
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=c["deepspeed"]["zero_stage"] == 3):
        if rank == 0:
            state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            meta = {
                "format": 1,
                "base_model": c["model"],
                "tokenizer": c["tokenizer"] or c["model"],
                "architecture": type(model).__name__,
                "task": c["task"],
                "reward_readout": ("token_classifier" if c["task"] != "reward"
                                   else "last_non_pad_token" if is_decoder(model) else "encoder_pooler"),
                "aggregate": c["train"]["aggregate"] or DEFAULT_AGGREGATE.get(c["task"]),
                "step_separator": c["data"]["step_separator"],
                "max_length": c["data"]["max_length"],
                "padding_side": tok.padding_side,
                "append_eos": True,
                "loss": c["train"]["loss"],
                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "reward_mean": stats["mean"],
                "temperature": metrics.get("eval_temperature", 1.0),  # calibrated P(a > b) = sigmoid((r_a - r_b) / T)
                "reward_std": stats["std"],
                "metrics": metrics,
            }
            save_export(model, tok, tmp, meta, state_dict=state_dict)
            if report_data is not None:
                from rayrm.report import eval_report

                r_c, r_r, lengths = report_data
                eval_report(r_c, r_r, lengths, os.path.join(tmp, "report"), temperature=meta["temperature"])
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**metrics, "final": 1}, checkpoint=ckpt)


def _load_eval(c: dict[str, Any], tok: Any) -> list[dict[str, torch.Tensor]]:
    """Pull this rank's eval shard into memory once (it is re-used at every evaluation)."""
    import ray.train

    from rayrm.data import length_grouped

    shard = ray.train.get_dataset_shard("eval")
    out = []
    bs = c["train"]["eval_batch_size"]
    for b in length_grouped(shard.iter_batches(batch_size=bs * 64, batch_format="numpy"), bs, 0):
        batch = _collate(c["task"], b, tok)
        batch["weight"] = torch.tensor(b["weight"], dtype=torch.float32)
        out.append(batch)
    return out


def _global_mean(losses: list[float], sizes: list[int], device: torch.device) -> float:
    """Pair-weighted mean of the per-micro-batch losses over every rank (a collective: all ranks call it)."""
    import torch.distributed as dist

    from rayrm.metrics import size_weighted_mean

    n = sum(sizes)
    t = torch.tensor([size_weighted_mean(losses, sizes) * n, float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


def _inject_fault(c: dict[str, Any], rank: int, world: int, step: int) -> None:
    """Test hook: the last rank exits hard once, after the checkpoint of `step` is registered.

    Ray Train's controller collects reported checkpoints on a ~2 s poll, so every rank waits at a barrier and then
    a few seconds before the exit; a marker file in output_dir makes it happen on the first attempt only.
    """
    import torch.distributed as dist

    marker = os.path.join(c["output_dir"], ".fault_injected")
    dist.barrier()
    time.sleep(5)
    if rank == world - 1 and not os.path.exists(marker):
        os.makedirs(c["output_dir"], exist_ok=True)
        open(marker, "w").close()
        print(f"[rayrm] fault injection: rank {rank} exits hard at step {step}", flush=True)
        os._exit(1)


# ---------------------------------------------------------------- the loop
def train_loop(c: dict[str, Any]) -> None:
    """Per-worker loop (Ray Train `train_loop_per_worker`); `c` is the job config as a dict plus run facts."""
    import ray.train

    from rayrm.data import length_grouped
    from rayrm.metrics import size_weighted_mean
    from rayrm.progress import rate_eta

    # 1. setup: engine, loss, resume state
    global _BOARD
    _BOARD = c.get("progress")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tr = c["train"]
    if c["scaling"]["torch_threads"]:
        torch.set_num_threads(c["scaling"]["torch_threads"])
    total_steps = c["total_steps"]
    engine, tok = _setup_engine(c, total_steps)
    device = engine.device
    step_loss = TASK_STEPS[c["task"]]
    state = {"epoch": 0, "micro_step": 0, "step": 0, "restarts": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            path, _ = engine.load_checkpoint(d, tag=DS_TAG)
            if path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint under {d} (tag {DS_TAG!r}); refusing to resume untrained")
            with open(os.path.join(d, STATE_FILE)) as f:
                state = json.load(f)
        state["restarts"] += 1
        log(f"resumed from checkpoint at step {state['step']} (epoch {state['epoch']}, restart {state['restarts']})")
    eval_batches = _load_eval(c, tok)
    shard = ray.train.get_dataset_shard("train")

    # 2. epochs of micro-batches; DeepSpeed steps the optimizer every gradient_accumulation_steps micro-batches
    sink = MetricSink(c, rank)
    losses, sizes, pairs_seen = [], [], 0
    # seconds of this worker's loop by phase; their sum is the loop time (evaluations and checkpoints excluded)
    phase = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
    eval_metrics: dict[str, float] = {}
    t_start, start_step = time.perf_counter(), state["step"]  # wall clock for the ETA (evaluations included)
    while state["epoch"] < tr["epochs"]:
        buffers = shard.iter_batches(
            batch_size=tr["micro_batch_size"] * tr["length_group_batches"], batch_format="numpy", prefetch_batches=1
        )
        it = length_grouped(buffers, tr["micro_batch_size"], tr["seed"] + state["epoch"], tr["group_by_length"])
        t_last = time.perf_counter()
        for micro, b in enumerate(it):
            if micro < state["micro_step"]:
                continue  # fast-forward after a restart
            batch = _device_batch(_collate(c["task"], b, tok), device)
            weight = torch.tensor(b["weight"], dtype=torch.float32, device=device)
            boundary = engine.is_gradient_accumulation_boundary()  # this micro-batch completes an optimizer step
            t_data = time.perf_counter()
            loss = step_loss(engine, batch, weight, tr)
            t_fwd = time.perf_counter()
            engine.backward(loss)
            t_bwd = time.perf_counter()
            engine.step()
            n_real = int(weight.sum())
            losses.append(loss.item())  # on a GPU this waits for the queued kernels: the split there is host time
            t_end = time.perf_counter()
            for k, (a, z) in zip(phase, ((t_last, t_data), (t_data, t_fwd), (t_fwd, t_bwd), (t_bwd, t_end))):
                phase[k] += z - a
            t_last = t_end
            sizes.append(n_real)
            pairs_seen += n_real
            state["micro_step"] = micro + 1
            if not boundary:
                continue  # DeepSpeed steps the optimizer only at accumulation boundaries
            state["step"] += 1
            step = state["step"]

            # 3. progress, evaluation, checkpoint, fault injection
            if step % tr["log_every"] == 0:
                recent = size_weighted_mean(losses[-tr['log_every']:], sizes[-tr['log_every']:])
                secs = max(1e-9, sum(phase.values()))
                rate = pairs_seen * world / secs
                split = " ".join(f"{k} {v / secs:.0%}" for k, v in phase.items())
                _, eta = rate_eta(step - start_step, total_steps - start_step, time.perf_counter() - t_start)
                log(f"step {step}/{total_steps} loss {recent:.4f} lr {engine.get_lr()[0]:.2e} {rate:.1f} pairs/s "
                    f"ETA {eta} ({split})")
                sink.write({"train_loss": recent, "train_lr": engine.get_lr()[0], "train_pairs_per_s": rate}, step)
            do_eval = tr["eval_every"] and step % tr["eval_every"] == 0 and step < total_steps
            do_ckpt = tr["checkpoint_every"] and step % tr["checkpoint_every"] == 0 and step < total_steps
            if do_eval:
                eval_metrics, _ = _evaluate(c, engine, eval_batches, device)
                log(f"step {step} held-out " + _fmt_metrics(eval_metrics))
                sink.write(eval_metrics, step)
            if do_eval or do_ckpt:
                metrics = {"step": step, "train_loss": _global_mean(losses, sizes, device), **eval_metrics}
                if do_ckpt:
                    _save_checkpoint(engine, state, metrics)
                else:
                    ray.train.report(metrics)
                if do_ckpt and tr["fail_at_step"] == step:
                    _inject_fault(c, rank, world, step)
            t_last = time.perf_counter()  # logging, evaluation and checkpoints are not loop time
        state["epoch"] += 1
        state["micro_step"] = 0

    # 4. final evaluation over all ranks, then export
    from rayrm.metrics import reward_stats

    eval_metrics, values = _evaluate(c, engine, eval_batches, device, final=True)
    report_data = eval_metrics.pop("_report", None)

    secs = max(1e-9, sum(phase.values()))
    metrics = {
        "step": state["step"],
        "train_loss": _global_mean(losses, sizes, device),
        "train_pairs_per_s": pairs_seen * world / secs,
        **{f"train_share_{k}": v / secs for k, v in phase.items()},
        "restarts": state["restarts"],
        **eval_metrics,
    }
    log("final held-out " + _fmt_metrics(eval_metrics))
    sink.write(metrics, state["step"])
    sink.close()
    _export(engine, tok, c, metrics, reward_stats(values), report_data)


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


def prepare_datasets(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read, validate, render and split the preference data; tokenise it with Ray Data.

    Returns ({"train": ds, "eval": ds}, facts) where facts has row counts, skipped and truncated rows.
    """
    import ray.data

    from rayrm.data import GroupTokenizer, read_preferences, read_rows, render_group, split_rows
    from rayrm.losses import PAIRWISE_LOSSES
    from rayrm.model import load_tokenizer
    from rayrm.token_tasks import TokenTaskTokenizer, validate_outcome_row, validate_process_row

    d = cfg.data
    need_margin = cfg.train.loss == "margin"
    ratings = tuple(d.rating_fields) if d.rating_fields else None
    max_k = 2 if cfg.train.loss in PAIRWISE_LOSSES else None

    def read(path: str) -> Any:
        if cfg.task == "reward":
            return read_preferences(path, d.split, d.on_bad_row, need_margin, ratings, max_k)
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
    if report.skipped:
        log(f"skipped {report.skipped} bad rows (data.on_bad_row=skip); first: {report.errors[:3]}")
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

    def to_ds(part: list[dict[str, Any]]) -> Any:
        if cfg.task == "reward":  # render on the driver: chat templates, implicit prompts
            part = [{k: v for k, v in render_group(r, tok).items() if k in keys} for r in part]
        ds = ray.data.from_items(_pad_to_multiple(part, world))
        ds.context.execution_options.preserve_order = True  # same rows in the same order: a seed gives one model
        ds = ds.map_batches(fn, fn_constructor_kwargs=kwargs, batch_size=256,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=0.5)
        return ds.materialize()

    datasets = {"train": to_ds(train_rows), "eval": to_ds(eval_rows)}
    trunc = {k: int(ds.sum("truncated") or 0) for k, ds in datasets.items()}
    facts = {
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "skipped_rows": report.skipped,
        "truncated_train": trunc["train"],
        "truncated_eval": trunc["eval"],
    }
    log(f"data: {facts['train_pairs']:,} train / {facts['eval_pairs']:,} held-out rows; truncated to "
        f"data.max_length={d.max_length}: {facts['truncated_train']:,} train, {facts['truncated_eval']:,} held-out; "
        f"skipped {facts['skipped_rows']:,}")
    return datasets, facts


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """The training job: returns the final metrics and writes the export to <output_dir>/final."""
    import shutil

    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False  # rank-0 `[rayrm]` lines report progress
    output_dir = os.path.abspath(cfg.output_dir)
    datasets, facts = prepare_datasets(cfg)
    world = cfg.scaling.num_workers
    rows_per_worker = (facts["train_pairs"] + world - 1) // world
    micro_steps = math.ceil(rows_per_worker / cfg.train.micro_batch_size)
    # DeepSpeed counts micro-steps across epochs; a trailing partial accumulation is not stepped
    total_steps = max(1, cfg.train.epochs * micro_steps // cfg.train.gradient_accumulation_steps)
    loop_config = {**to_dict(cfg), "total_steps": total_steps, "output_dir": output_dir}
    loop_config["model"] = _abs_if_local(cfg.model)
    loop_config["tokenizer"] = _abs_if_local(cfg.tokenizer) if cfg.tokenizer else None
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    _guard_run_dir(os.path.join(cfg.storage_path or os.path.join(output_dir, "ray"), cfg.name), loop_config)
    from rayrm.progress import Board

    board = Board.start()  # rank 0's progress lines, printed here once
    loop_config["progress"] = board.handle
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # each worker's shard in the same order on every run (reproducible training)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=world, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path or os.path.join(output_dir, "ray"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    log(f"training {total_steps} steps on {world} workers (ZeRO-{cfg.deepspeed.zero_stage}, {cfg.deepspeed.precision})")
    t0 = time.time()
    try:
        result = trainer.fit()
    finally:
        board.close()
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
    meta_path = os.path.join(final, "rayrm.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["data"] = facts
    meta["wall_s"] = wall
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return metrics


def _guard_run_dir(run_dir: str, loop_config: dict[str, Any]) -> None:
    """Ray Train resumes any run found at storage_path/name. Allow that only for the same config (a rerun after a
    crash); a different config there would silently continue someone else's checkpoint, so refuse it."""
    if "://" in run_dir:
        return  # remote storage: left to the user
    keep = {k: v for k, v in loop_config.items() if k not in ("train", "output_dir", "storage_path")}
    keep["train"] = {k: v for k, v in loop_config["train"].items() if k not in ("fail_at_step", "max_failures", "log_every")}
    fingerprint = json.dumps(keep, sort_keys=True, default=str)
    path = os.path.join(run_dir, "rayrm_run_config.json")
    if os.path.exists(path):
        with open(path) as f:
            if f.read() != fingerprint:
                raise UserError(
                    f"{run_dir} holds a Ray Train run with a different config, which Ray would resume from; "
                    "choose another `name` or `output_dir`/`storage_path`, or delete that directory"
                )
        log(f"resuming the run in {run_dir} (same config)")
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(fingerprint)


def _abs_if_local(name: str) -> str:
    return os.path.abspath(name) if os.path.exists(name) else name
