"""Reward-model losses, pure torch (no Ray, DeepSpeed or transformers).

Every function takes rewards as float tensors of shape (b,) and returns a scalar tensor.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return x.mean()
    w = weight.to(x.dtype)
    return (x * w).sum() / w.sum().clamp(min=1e-12)


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of -log sigmoid(r_c - r_r - m), written as softplus(-(r_c - r_r - m)).

    softplus is finite for any margin (log-sigmoid of -1000 would underflow to -inf).
    `margin` (b,) is the Llama-2 style per-pair margin; None means 0. `weight` (b,) gives a weighted mean
    (0 for the filler rows that even out data-parallel shards).
    """
    diff = r_chosen.float() - r_rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return _weighted_mean(F.softplus(-diff), weight)


def centering_penalty(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, coef: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """coef * mean((r_c + r_r)^2): pulls the reward scale towards zero mean (Eisenstein et al. 2023)."""
    return coef * _weighted_mean((r_chosen.float() + r_rejected.float()).pow(2), weight)


# ---------------------------------------------------------------- listwise (K completions of one prompt)
# Groups come as a padded matrix: scores (g, K) ordered best first, mask (g, K) True where a completion exists.
# A preference pair is the group [chosen, rejected] (K = 2).


def plackett_luce_loss(
    scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over groups of the Plackett-Luce NLL of the given ranking (best first):
    sum_{i < K-1} [logsumexp(s_i, ..., s_{K-1}) - s_i].

    At K = 2 this is softplus(-(s_0 - s_1)), the Bradley-Terry loss. Missing entries (mask False) are excluded.
    """
    s = scores.float().masked_fill(~mask, -1e30)  # finite stand-in for -inf keeps gradients NaN-free
    # suffix logsumexp: tail[i] = logsumexp(s[i:]) via a cumulative logsumexp over the flipped rows
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    k = mask.sum(-1, keepdim=True)
    pos = torch.arange(s.shape[-1], device=s.device).unsqueeze(0)
    use = mask & (pos < k - 1)  # the last item's term is logsumexp(s_K) - s_K = 0
    terms = torch.where(use, tail - s, torch.zeros_like(s))
    return _weighted_mean(terms.sum(-1), weight)


def grouped_pairs_loss(
    scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """InstructGPT's loss: every pair (i better than j) of a group, each weighted 1 / C(K, 2), summed per group,
    then the (weighted) mean over groups, so a prompt with many completions does not outweigh one with few."""
    s = scores.float()
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # (g, K, K): s_i - s_j
    w = group_pair_weights(mask)
    per_group = (torch.where(w > 0, F.softplus(-diff), torch.zeros_like(diff)) * w).sum((-1, -2))
    return _weighted_mean(per_group, weight)


def group_pair_weights(mask: torch.Tensor) -> torch.Tensor:
    """(g, K, K) weight of each ordered pair (i better than j, i.e. i < j) of a group: 1 / C(K, 2), else 0."""
    kk = mask.shape[-1]
    upper = torch.triu(torch.ones(kk, kk, dtype=torch.bool, device=mask.device), diagonal=1)
    valid = upper & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return valid.float() / valid.sum((-1, -2), keepdim=True).clamp(min=1)


def _bt(scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, margin: torch.Tensor | None) -> torch.Tensor:
    """Bradley-Terry on [chosen, rejected], any margin column ignored."""
    return bradley_terry_loss(scores[:, 0], scores[:, 1], None, weight)


def _bt_margin(scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, margin: torch.Tensor | None) -> torch.Tensor:
    """Bradley-Terry minus the per-pair margin (from a `margin` column or the rating difference)."""
    return bradley_terry_loss(scores[:, 0], scores[:, 1], margin, weight)


def _pl(scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, margin: torch.Tensor | None) -> torch.Tensor:
    return plackett_luce_loss(scores, mask, weight)


def _grouped(scores: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, margin: torch.Tensor | None) -> torch.Tensor:
    return grouped_pairs_loss(scores, mask, weight)


GroupLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]

# Config value (train.loss) -> loss over groups: (scores (g, K) best first, mask (g, K), weight (g,), margin (g,)).
# The training loop looks the function up once; no string checks in the loop.
LOSSES: dict[str, GroupLoss] = {
    "bradley_terry": _bt,
    "margin": _bt_margin,  # needs a `margin` column or data.rating_fields
    "plackett_luce": _pl,  # K-wise rankings; at K = 2 equal to bradley_terry
    "grouped_pairs": _grouped,  # InstructGPT: all C(K, 2) pairs of a prompt, each weighted 1 / C(K, 2)
}
PAIRWISE_LOSSES = ("bradley_terry", "margin")  # these take exactly two completions per row
PAIR_LOSSES = LOSSES  # earlier name


# ---------------------------------------------------------------- token-level heads (outcome and process RMs)
IGNORE = -100  # label of tokens that carry no target (prompt, padding, non-boundary tokens)


def token_bce_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Outcome RM: mean binary cross-entropy over every labelled token. logits, labels (b, s); labels 0/1 or IGNORE.
    `weight` (b,) scales each sequence's tokens (0 for filler rows)."""
    keep = labels != IGNORE
    w = keep.float() if weight is None else keep.float() * weight.float().unsqueeze(-1)
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(), reduction="none")
    return (bce * w).sum() / w.sum().clamp(min=1e-12)


def step_ce_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Process RM: mean 3-class cross-entropy at step-boundary tokens. logits (b, s, 3); labels (b, s) in
    {0: bad (-1), 1: neutral (0), 2: good (+1)} or IGNORE. `weight` (b,) as in `token_bce_loss`."""
    keep = labels != IGNORE
    w = keep.float() if weight is None else keep.float() * weight.float().unsqueeze(-1)
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")  # (b, s)
    return (ce * w).sum() / w.sum().clamp(min=1e-12)
