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
