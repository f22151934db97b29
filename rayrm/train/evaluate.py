"""Held-out evaluation inside the training job, over every rank's eval shard (a collective: all ranks call it).

Works in any torch.distributed group, Ray Train's or a plain process's (world size 1).
"""

from __future__ import annotations

from typing import Any

import torch

from rayrm.config import TrainConfig
from rayrm.train.engine import DEFAULT_AGGREGATE, device_batch, group_scores


def group_pairs(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ordered pair (better, worse) of every group: (r_better, r_worse, group of the pair). Pairs: (r_c, r_r)."""
    kk = scores.shape[1]
    i, j = torch.triu_indices(kk, kk, offset=1)
    ok = mask[:, i] & mask[:, j]  # (g, P)
    g = torch.arange(scores.shape[0]).unsqueeze(1).expand_as(ok)
    return scores[:, i][ok], scores[:, j][ok], g[ok]


def evaluate_pairs(
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
            scores = group_scores(engine, device_batch(batch, device)).cpu()
            keep = batch["weight"] > 0  # filler groups count in no metric
            mask = batch["group_mask"][keep]
            c, r, _ = group_pairs(scores[keep], mask)
            seq_len = batch["seq_len"][batch["index"].clamp(min=0)][keep].float()  # (g, K)
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
            b = device_batch(batch, device)
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


def evaluate(
    cfg: TrainConfig, engine: Any, batches: list[dict[str, torch.Tensor]], device: torch.device, final: bool = False
) -> tuple[dict[str, float], torch.Tensor, Any]:
    """Held-out metrics for the job's task, the values whose mean/std become the normalisation stats, and (at the
    final evaluation of a scalar RM) the data of the eval report (r_c, r_r, lengths). At the final evaluation with
    `train.calibrate`, also the temperature T that calibrates sigmoid((r_c - r_r) / T) and the ECE after it."""
    if cfg.task == "reward":
        from rayrm.metrics import fit_temperature, pair_ece

        metrics, r_c, r_r, lengths = evaluate_pairs(engine, batches, device)
        if final and cfg.train.calibrate:
            t = fit_temperature(r_c, r_r)
            metrics["eval_temperature"] = t
            metrics["eval_ece_calibrated"] = pair_ece(r_c / t, r_r / t)
        return metrics, torch.cat([r_c, r_r]), (r_c, r_r, lengths) if final else None
    aggregate = cfg.train.aggregate or DEFAULT_AGGREGATE[cfg.task]
    metrics, values = evaluate_tokens(engine, batches, device, cfg.task, aggregate)
    return metrics, values, None


def global_mean(losses: list[float], sizes: list[int], device: torch.device) -> float:
    """Pair-weighted mean of the per-micro-batch losses over every rank (a collective: all ranks call it)."""
    import torch.distributed as dist

    from rayrm.metrics import size_weighted_mean

    n = sum(sizes)
    t = torch.tensor([size_weighted_mean(losses, sizes) * n, float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


def peak_memory_gib(device: torch.device) -> list[float]:
    """Every rank's peak memory in GiB, in rank order (a collective): the most GPU memory torch allocated on a GPU,
    the process's peak resident set (RSS, from getrusage) on a CPU."""
    import resource

    import torch.distributed as dist

    if device.type == "cuda":
        mine = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB
    t = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    t[dist.get_rank()] = mine
    dist.all_reduce(t)
    return [float(x) for x in t.cpu()]
