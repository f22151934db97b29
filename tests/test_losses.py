"""Loss math pinned with hand-derived numbers."""

import math

import torch

from rayrm.losses import PAIR_LOSSES, bradley_terry_loss, centering_penalty

LN2 = math.log(2.0)


def test_softplus_form_equals_neg_log_sigmoid():
    rc = torch.tensor([1.0, -0.5, 3.0, 0.0])
    rr = torch.tensor([0.0, 0.5, -1.0, 2.0])
    expected = -torch.log(torch.sigmoid(rc - rr)).mean()
    assert torch.allclose(bradley_terry_loss(rc, rr), expected, atol=1e-7)
    # by hand for the first pair: -log sigmoid(1) = log(1 + e^-1) = 0.31326...
    assert abs(float(bradley_terry_loss(rc[:1], rr[:1])) - math.log(1 + math.exp(-1))) < 1e-7


def test_tie_gives_ln2():
    r = torch.tensor([0.3, -2.0, 7.0])
    assert abs(float(bradley_terry_loss(r, r)) - LN2) < 1e-7  # 0.693147...


def test_shift_invariance():
    rc, rr = torch.tensor([0.2, 1.5]), torch.tensor([-0.4, 2.0])
    base = bradley_terry_loss(rc, rr)
    for c in (-100.0, 3.0, 1e3):
        assert torch.allclose(bradley_terry_loss(rc + c, rr + c), base, atol=1e-5)


def test_finite_at_extreme_margins():
    rc, rr = torch.tensor([1000.0, -1000.0]), torch.tensor([-1000.0, 1000.0])
    assert float(bradley_terry_loss(rc[:1], rr[:1])) == 0.0  # softplus(-2000) underflows to exactly 0
    assert abs(float(bradley_terry_loss(rc[1:], rr[1:])) - 2000.0) < 1e-3  # softplus(2000) = 2000
    assert math.isfinite(float(bradley_terry_loss(rc, rr)))
    # the naive form overflows: log(sigmoid(-2000)) = log(0) = -inf
    assert math.isinf(float(torch.log(torch.sigmoid(torch.tensor(-2000.0)))))


def test_sigmoid_is_bradley_terry_ratio():
    ri, rj = torch.tensor(1.3, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    ratio = torch.exp(ri) / (torch.exp(ri) + torch.exp(rj))
    assert abs(float(torch.sigmoid(ri - rj) - ratio)) < 1e-12


def test_margin_shifts_the_decision_point():
    rc, rr = torch.tensor([2.0]), torch.tensor([1.0])
    # diff 1, margin 1 -> softplus(0) = ln 2
    assert abs(float(bradley_terry_loss(rc, rr, margin=torch.tensor([1.0]))) - LN2) < 1e-7
    # the config maps "bradley_terry" to a loss that ignores the margin column, "margin" to one that uses it
    m = torch.tensor([1.0])
    assert abs(float(PAIR_LOSSES["bradley_terry"](rc, rr, m, None)) - math.log(1 + math.exp(-1))) < 1e-7
    assert abs(float(PAIR_LOSSES["margin"](rc, rr, m, None)) - LN2) < 1e-7


def test_weights_mask_filler_rows():
    rc, rr = torch.tensor([0.0, 100.0]), torch.tensor([0.0, -100.0])
    w = torch.tensor([1.0, 0.0])
    assert abs(float(bradley_terry_loss(rc, rr, weight=w)) - LN2) < 1e-7


def test_centering_penalty_value_and_unique_minimiser():
    rc, rr = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    # coef * mean((1+0)^2, (3+2)^2) = 0.5 * (1 + 25) / 2 = 6.5
    assert abs(float(centering_penalty(rc, rr, 0.5)) - 6.5) < 1e-6
    # BT is shift invariant, so the centred objective in a shift s is minimised where d/ds mean((rc+rr+2s)^2) = 0,
    # i.e. s* = -mean(rc + rr) / 2 = -(1 + 5) / 2 / 2 = -1.5; check on a grid that it is the only minimum.
    s_star = -float((rc + rr).mean()) / 2
    assert s_star == -1.5
    shifts = torch.linspace(-4, 1, 501)
    vals = torch.stack([bradley_terry_loss(rc + s, rr + s) + centering_penalty(rc + s, rr + s, 0.5) for s in shifts])
    best = shifts[int(torch.argmin(vals))]
    assert abs(float(best) - s_star) < 1e-2
    assert int((vals == vals.min()).sum()) == 1
