"""Evaluation and reduction math, pure torch.

Rewards are float tensors of shape (b,); outcomes are 0/1 tensors of shape (b,).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Fraction of pairs with r_c > r_r strictly; a tie counts as wrong."""
    return (r_chosen > r_rejected).float().mean().item()


def mean_margin(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Mean of r_c - r_r."""
    return (r_chosen.float() - r_rejected.float()).mean().item()


def expected_calibration_error(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int = 10) -> float:
    """ECE = sum_b |B_b|/n * |mean(outcome in b) - mean(prob in b)| over equal-width bins of [0, 1].

    A probability of exactly 1.0 falls in the last bin.
    """
    probs = probs.double()
    outcomes = outcomes.double()
    n = probs.numel()
    if n == 0:
        return 0.0
    idx = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = idx == b
        cnt = int(sel.sum())
        if cnt:
            ece += cnt / n * (outcomes[sel].mean() - probs[sel].mean()).abs()
    return float(ece)


def pair_ece(r_chosen: torch.Tensor, r_rejected: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of the BT preference probability sigmoid(r_c - r_r) against the label "chosen wins".

    Each pair is scored in both orders (p with outcome 1, 1-p with outcome 0) so the bins cover [0, 1]
    symmetrically; scoring only one order would put every outcome at 1.
    """
    p = torch.sigmoid(r_chosen.double() - r_rejected.double())
    probs = torch.cat([p, 1 - p])
    outcomes = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    return expected_calibration_error(probs, outcomes, n_bins)


def whiten(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / std (population std). When std < eps every reward maps to 0 instead of dividing by ~0."""
    r = rewards.double()
    mean = r.mean()
    std = r.std(unbiased=False)
    if std < eps:
        return torch.zeros_like(rewards, dtype=torch.float64).to(rewards.dtype)
    return ((r - mean) / std).to(rewards.dtype)


def best_of_n(rewards: torch.Tensor) -> int:
    """Index of the highest reward; the first one wins a tie (deterministic)."""
    return int(torch.argmax(rewards))  # torch.argmax returns the first maximal index


def size_weighted_mean(means: Sequence[float], sizes: Sequence[int]) -> float:
    """Combine per-shard means into the global mean: sum(n_i * m_i) / sum(n_i).

    The plain mean of means is wrong when shards have uneven sizes.
    """
    total = sum(sizes)
    if total == 0:
        return 0.0
    return sum(m * n for m, n in zip(means, sizes, strict=True)) / total


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Mean and population std of a reward tensor (b,): the normalisation stats stored in rayrm.json."""
    r = rewards.double()
    return {"mean": float(r.mean()), "std": float(r.std(unbiased=False))}


def preference_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, n_bins: int = 10) -> dict[str, float]:
    """All held-out metrics for a set of pairs: BT loss, accuracy, margin, ECE, reward mean/std."""
    from rayrm.losses import bradley_terry_loss

    stats = reward_stats(torch.cat([r_chosen, r_rejected]))
    return {
        "loss": float(bradley_terry_loss(r_chosen, r_rejected)),
        "accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "margin": mean_margin(r_chosen, r_rejected),
        "ece": pair_ece(r_chosen, r_rejected, n_bins),
        "reward_mean": stats["mean"],
        "reward_std": stats["std"],
        "num_pairs": float(r_chosen.numel()),
    }


# ---------------------------------------------------------------- calibration and reliability
def preference_probability(r_a: torch.Tensor, r_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(a preferred over b) = sigmoid((r_a - r_b) / T), shape (b,); T from `fit_temperature` calibrates it."""
    return torch.sigmoid((r_a.double() - r_b.double()) / temperature)


def temperature_nll(r_chosen: torch.Tensor, r_rejected: torch.Tensor, temperature: float) -> float:
    """Mean BT negative log-likelihood of "chosen wins" at temperature T: mean softplus(-(r_c - r_r) / T)."""
    d = r_chosen.double() - r_rejected.double()
    return float(torch.nn.functional.softplus(-d / temperature).mean())


def fit_temperature(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, t_min: float = 1e-3, t_max: float = 1e3, max_iter: int = 100
) -> float:
    """Temperature T minimising the BT NLL of sigmoid((r_c - r_r) / T) on held-out pairs (b,), within [t_min, t_max].

    With beta = 1/T the NLL f(beta) = mean softplus(-beta d) is convex in beta: f'(beta) = -mean d sigmoid(-beta d)
    is increasing (f'' = mean d^2 s(beta d) s(-beta d) >= 0), so the minimum is the unique root of f'. Newton steps
    on beta, kept inside a bracket that shrinks with the sign of f' (a bisection in log beta when Newton leaves it),
    converge in a handful of O(b) passes. Edge cases follow from the sign of f' at the bounds: every pair ranked
    right (f' < 0 everywhere) -> t_min; mean margin <= 0 (f'(0) >= 0, no better than its negation) -> t_max.
    T does not change accuracy, only how confident the probabilities are.
    """
    import math

    d = r_chosen.double() - r_rejected.double()
    if d.numel() == 0:
        return 1.0

    def grad_hess(beta: float) -> tuple[float, float]:
        s = torch.sigmoid(-beta * d)
        return float(-(d * s).mean()), float((d * d * s * (1 - s)).mean())

    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket on beta
    if grad_hess(lo)[0] >= 0:
        return float(t_max)
    if grad_hess(hi)[0] <= 0:
        return float(t_min)
    beta = min(max(1.0, lo), hi)
    for _ in range(max_iter):
        g, h = grad_hess(beta)
        if g < 0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > 0 else float("nan")
        new = step if lo < step < hi else math.sqrt(lo * hi)  # Newton inside the bracket, else bisect (log scale)
        if abs(new - beta) <= 1e-13 * beta or hi - lo <= 1e-13 * lo:
            beta = new
            break
        beta = new
    return float(1.0 / beta)


def reliability_table(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin of [0, 1]: {lo, hi, count, confidence (mean prob), frequency (mean outcome)}.

    The binning is `expected_calibration_error`'s, so sum(count/n * |frequency - confidence|) over the non-empty
    bins is that ECE; empty bins have count 0 and NaN means (a reliability diagram skips them).
    """
    probs, outcomes = probs.double(), outcomes.double()
    idx = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = idx == b
        cnt = int(sel.sum())
        rows.append({
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "count": cnt,
            "confidence": float(probs[sel].mean()) if cnt else float("nan"),
            "frequency": float(outcomes[sel].mean()) if cnt else float("nan"),
        })
    return rows


def pair_reliability(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, n_bins: int = 10, temperature: float = 1.0
) -> list[dict[str, float]]:
    """Reliability table of sigmoid((r_c - r_r) / T), each pair in both orders as in `pair_ece`."""
    p = preference_probability(r_chosen, r_rejected, temperature)
    return reliability_table(torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)]), n_bins)


def length_bucket_edges(lengths: torch.Tensor, n_buckets: int = 4) -> list[float]:
    """Quantile edges [e_0 = min, ..., e_k = max] of per-pair lengths (n,), duplicates removed (ties at an edge).

    Bucket i holds e_i <= length < e_{i+1}; the last one also takes length == max.
    """
    q = torch.quantile(lengths.double(), torch.linspace(0, 1, n_buckets + 1, dtype=torch.float64))
    return sorted({float(x) for x in q})


def bucket_index(lengths: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Bucket of each length (n,) -> (n,) long: i where e_i <= length < e_{i+1}, the last bucket also taking the
    maximum; one bucket (0) when `edges` has a single value. Buckets 0 .. max(1, len(edges) - 1) - 1."""
    inner = torch.tensor(list(edges[1:-1]), dtype=torch.float64)
    return torch.bucketize(lengths.double(), inner, right=True)


def accuracy_by_bucket(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, lengths: torch.Tensor, edges: Sequence[float]
) -> list[dict[str, float]]:
    """Pairwise accuracy per length bucket: [{lo, hi, count, accuracy}], buckets from `edges` (see above)."""
    idx = bucket_index(lengths, edges)
    out = []
    for b in range(max(1, len(edges) - 1)):
        sel = idx == b
        cnt = int(sel.sum())
        out.append({
            "lo": float(edges[b]),
            "hi": float(edges[min(b + 1, len(edges) - 1)]),
            "count": cnt,
            "accuracy": pairwise_accuracy(r_chosen[sel], r_rejected[sel]) if cnt else float("nan"),
        })
    return out


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` (n,) for binary `labels` (n,): the probability that a random positive
    scores above a random negative, ties counting one half (Mann-Whitney U with average ranks). 0.5 = chance."""
    s = scores.double()
    y = labels.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    uniq, inv = torch.unique(s, return_inverse=True)  # average ranks over ties
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    avg = (sums / counts)[inv]
    u = avg[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def aggregate_scores(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Per-sequence aggregate of per-token or per-step probabilities (b, s) where mask is True:
    "mean", "min", "product" or "last". A row with nothing to aggregate gives NaN."""
    v = values.double()
    m = mask.bool()
    n = m.sum(-1)
    if how == "mean":
        out = (v * m).sum(-1) / n.clamp(min=1)
    elif how == "min":
        out = v.masked_fill(~m, float("inf")).min(-1).values
    elif how == "product":
        out = torch.exp((torch.log(v.clamp(min=1e-12)) * m).sum(-1))
    elif how == "last":
        pos = torch.arange(v.shape[-1], device=v.device)
        last = (pos * m).argmax(-1)
        out = v.gather(-1, last.unsqueeze(-1))[:, 0]
    else:
        raise ValueError(f"aggregate must be mean, min, product or last, got {how!r}")
    return torch.where(n > 0, out, torch.full_like(out, float("nan"))).to(values.dtype)
