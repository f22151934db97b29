"""Loss math pinned with hand-derived numbers."""

import math

import torch

from rayrm.losses import (
    LOSSES,
    bradley_terry_loss,
    centering_penalty,
    group_pair_weights,
    grouped_pairs_loss,
    plackett_luce_loss,
)

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
    assert math.isfinite(float(bradley_terry_loss(rc, rr)))  # where the naive -log(sigmoid(-2000)) is inf


def test_loss_is_minus_log_of_the_bradley_terry_ratio():
    ri, rj = torch.tensor([1.3], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    ratio = math.exp(1.3) / (math.exp(1.3) + math.exp(-0.4))  # P(i preferred over j) = e^ri / (e^ri + e^rj)
    assert abs(float(bradley_terry_loss(ri, rj)) + math.log(ratio)) < 1e-6  # the loss computes in fp32


def test_margin_shifts_the_decision_point():
    rc, rr = torch.tensor([2.0]), torch.tensor([1.0])
    # diff 1, margin 1 -> softplus(0) = ln 2
    assert abs(float(bradley_terry_loss(rc, rr, margin=torch.tensor([1.0]))) - LN2) < 1e-7
    # the config maps "bradley_terry" to a loss that ignores the margin column, "margin" to one that uses it
    m = torch.tensor([1.0])
    scores, mask = torch.stack([rc, rr], dim=1), torch.ones(1, 2, dtype=torch.bool)
    assert abs(float(LOSSES["bradley_terry"](scores, mask, None, m)) - math.log(1 + math.exp(-1))) < 1e-7
    assert abs(float(LOSSES["margin"](scores, mask, None, m)) - LN2) < 1e-7


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


# ---------------------------------------------------------------- listwise
def test_plackett_luce_at_k2_equals_bradley_terry():
    rc = torch.tensor([1.0, -0.5, 3.0, 0.0, 1000.0])
    rr = torch.tensor([0.0, 0.5, -1.0, 2.0, -1000.0])
    scores, mask = torch.stack([rc, rr], 1), torch.ones(5, 2, dtype=torch.bool)
    assert torch.allclose(plackett_luce_loss(scores, mask), bradley_terry_loss(rc, rr), atol=1e-7)
    assert torch.allclose(grouped_pairs_loss(scores, mask), bradley_terry_loss(rc, rr), atol=1e-7)
    for name in LOSSES:  # every configured loss agrees on plain pairs without margins
        assert torch.allclose(LOSSES[name](scores, mask, None, torch.zeros(5)), bradley_terry_loss(rc, rr), atol=1e-7)


def test_plackett_luce_by_hand_k3_and_padding():
    # ranking best first (2, 1, 0): [log(e^2 + e + 1) - 2] + [log(e + 1) - 1]
    s = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # group 2 has K = 2; its 9.0 is padding
    g1 = (math.log(math.exp(2) + math.exp(1) + 1) - 2) + (math.log(math.exp(1) + 1) - 1)
    g2 = math.log(1 + math.exp(2))
    assert abs(float(plackett_luce_loss(s, mask)) - (g1 + g2) / 2) < 1e-6
    s.requires_grad_(True)
    plackett_luce_loss(s, mask).backward()
    assert s.grad[1, 2] == 0 and torch.isfinite(s.grad).all()  # padding gets no gradient, and no NaN


def test_grouped_pairs_weights_sum_to_one_per_prompt():
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, True, True, False]])
    w = group_pair_weights(mask)
    assert torch.allclose(w.sum((-1, -2)), torch.ones(3))
    assert abs(float(w[0, 0, 1]) - 1 / 6) < 1e-7 and abs(float(w[2, 0, 2]) - 1 / 3) < 1e-7
    # by hand: group (2, 1, 0) -> pairs with diffs 1, 2, 1 -> mean of softplus(-d)
    s = torch.tensor([[2.0, 1.0, 0.0]])
    hand = (2 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 3
    assert abs(float(grouped_pairs_loss(s, torch.ones(1, 3, dtype=torch.bool))) - hand) < 1e-6
    # a group with many completions weighs as much as one with two
    big = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 0.0]])
    m2 = torch.tensor([[True] * 4, [True, True, False, False]])
    per = [float(grouped_pairs_loss(big[i : i + 1], m2[i : i + 1])) for i in range(2)]
    assert abs(float(grouped_pairs_loss(big, m2)) - sum(per) / 2) < 1e-6
