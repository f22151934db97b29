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


def plain_bt_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None, weight: torch.Tensor | None
) -> torch.Tensor:
    """Bradley-Terry ignoring any margin column."""
    return bradley_terry_loss(r_chosen, r_rejected, None, weight)


PairLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]

# Config value -> loss function. The training loop looks the function up once; no string checks in the loop.
PAIR_LOSSES: dict[str, PairLoss] = {
    "bradley_terry": plain_bt_loss,
    "margin": bradley_terry_loss,  # subtracts the data's `margin` column (required by the reader)
}
