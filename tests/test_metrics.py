"""Metric math pinned with hand-derived numbers."""

import torch

from rayrm.metrics import (
    accuracy_by_bucket,
    best_of_n,
    expected_calibration_error,
    fit_temperature,
    length_bucket_edges,
    mean_margin,
    pair_ece,
    pair_reliability,
    pairwise_accuracy,
    preference_metrics,
    preference_probability,
    reliability_table,
    size_weighted_mean,
    temperature_nll,
    whiten,
)


def test_accuracy_counts_ties_as_wrong():
    rc = torch.tensor([1.0, 0.5, 2.0, -1.0])
    rr = torch.tensor([0.0, 0.5, 3.0, -2.0])
    assert pairwise_accuracy(rc, rr) == 0.5  # wins, tie (wrong), loses, wins


def test_mean_margin():
    assert abs(mean_margin(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])) - 0.5) < 1e-7  # (2 + -1) / 2


def test_ece_by_hand():
    # bin [0.9,1.0): probs 0.95, 0.95 with outcomes 1, 0 -> |0.5 - 0.95| = 0.45, weight 2/4
    # bin [0.1,0.2): probs 0.15, 0.15 with outcomes 0, 0 -> |0 - 0.15| = 0.15, weight 2/4
    probs = torch.tensor([0.95, 0.95, 0.15, 0.15])
    out = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert abs(expected_calibration_error(probs, out) - (0.5 * 0.45 + 0.5 * 0.15)) < 1e-6  # float32 inputs
    # perfectly calibrated: prob 1.0 (last bin) always right
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.0


def test_pair_ece_of_ties_is_zero():
    # sigmoid(0) = 0.5 in both orders: half the outcomes are 1, half 0 -> calibrated
    assert pair_ece(torch.zeros(4), torch.zeros(4)) < 1e-12


def test_whiten_and_zero_std_guard():
    w = whiten(torch.tensor([1.0, 3.0]))  # mean 2, population std 1
    assert torch.allclose(w, torch.tensor([-1.0, 1.0]))
    z = whiten(torch.tensor([5.0, 5.0, 5.0]))
    assert torch.equal(z, torch.zeros(3)) and torch.isfinite(z).all()


def test_best_of_n_first_max_wins_ties():
    assert best_of_n(torch.tensor([0.1, 0.9, 0.3])) == 1
    assert best_of_n(torch.tensor([0.2, 0.7, 0.7])) == 1


def test_size_weighted_mean_over_uneven_shards():
    shards = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0])]
    means = [float(s.mean()) for s in shards]  # 2.5 and 10
    sizes = [len(s) for s in shards]
    global_mean = float(torch.cat(shards).mean())  # 20 / 5 = 4
    assert abs(size_weighted_mean(means, sizes) - global_mean) < 1e-12
    assert abs(sum(means) / len(means) - global_mean) > 1.0  # the plain mean of means is 6.25


def test_preference_metrics_keys():
    m = preference_metrics(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert m["accuracy"] == 0.5 and m["num_pairs"] == 2.0
    assert abs(m["reward_mean"] - 0.25) < 1e-9


# ---------------------------------------------------------------- calibration (temperature) and reliability
def _pairs_with_accuracy(d: float, n_right: int, n_wrong: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins +d for n_right pairs and -d for n_wrong pairs (r_r = 0)."""
    rc = torch.tensor([d] * n_right + [-d] * n_wrong)
    return rc, torch.zeros_like(rc)


def test_fit_temperature_solves_sigmoid_d_over_t_equals_accuracy():
    # NLL(T) = p softplus(-d/T) + (1-p) softplus(d/T); d/dT = 0 <=> sigmoid(d/T) = p <=> T = d / logit(p)
    import math

    rc, rr = _pairs_with_accuracy(2.0, 3, 1)  # p = 3/4: T = 2 / ln 3 = 1.82048...
    assert abs(fit_temperature(rc, rr) - 2.0 / math.log(3.0)) < 1e-9
    rc, rr = _pairs_with_accuracy(0.5, 9, 1)  # p = 0.9: T = 0.5 / ln 9 = 0.22756... (sharpens an under-confident RM)
    assert abs(fit_temperature(rc, rr) - 0.5 / math.log(9.0)) < 1e-9


def test_fit_temperature_is_scale_equivariant_and_minimises_the_nll():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(500, generator=g) + 0.7, torch.randn(500, generator=g)
    t = fit_temperature(rc, rr)
    assert abs(fit_temperature(3 * rc, 3 * rr) - 3 * t) < 1e-8 * t  # rewards x3 -> T x3, same probabilities
    assert temperature_nll(rc, rr, t) < min(temperature_nll(rc, rr, t * 1.01), temperature_nll(rc, rr, t / 1.01))


def test_fit_temperature_bounds():
    # all pairs right: the NLL falls as T -> 0, so T = t_min; mean margin <= 0: T -> infinity, so T = t_max
    assert fit_temperature(torch.tensor([1.0, 2.0]), torch.zeros(2), t_min=0.01) == 0.01
    assert fit_temperature(*_pairs_with_accuracy(1.0, 1, 1), t_max=50.0) == 50.0
    assert fit_temperature(torch.zeros(0), torch.zeros(0)) == 1.0


def test_fit_temperature_recovers_a_known_temperature():
    # labels drawn from sigmoid(d / 2): the maximum-likelihood T is 2 up to sampling noise (n = 30k: sd ~0.02; under 32k elements torch stays single-threaded)
    g = torch.Generator().manual_seed(1)
    d = torch.randn(30_000, generator=g, dtype=torch.float64) * 3
    right = torch.rand(30_000, generator=g, dtype=torch.float64) < torch.sigmoid(d / 2.0)
    rc = torch.where(right, d, -d)  # a pair whose label disagrees with d has margin -d
    assert abs(fit_temperature(rc, torch.zeros_like(rc)) - 2.0) < 0.05


def test_preference_probability():
    p = preference_probability(torch.tensor([2.0]), torch.tensor([0.0]), temperature=2.0)
    assert abs(float(p) - 1 / (1 + 2.718281828459045 ** -1)) < 1e-9  # sigmoid(1)


def test_reliability_table_reproduces_the_ece():
    # same fixture as test_ece_by_hand: bins 1 and 9 are filled, everything else empty
    probs = torch.tensor([0.95, 0.95, 0.15, 0.15])
    out = torch.tensor([1.0, 0.0, 0.0, 0.0])
    t = reliability_table(probs, out)
    assert [r["count"] for r in t] == [0, 2, 0, 0, 0, 0, 0, 0, 2 - 2, 2]
    assert abs(t[9]["confidence"] - 0.95) < 1e-7 and t[9]["frequency"] == 0.5 and t[1]["frequency"] == 0.0
    ece = sum(r["count"] / 4 * abs(r["frequency"] - r["confidence"]) for r in t if r["count"])
    assert abs(ece - expected_calibration_error(probs, out)) < 1e-12
    # pair version: each pair in both orders -> 2n entries, symmetric around 0.5
    pt = pair_reliability(torch.tensor([1.0, 1.0]), torch.zeros(2))
    assert sum(r["count"] for r in pt) == 4 and pt[7]["count"] == 2 and pt[2]["count"] == 2  # sigmoid(1) = 0.731


def test_length_buckets_and_accuracy_by_bucket():
    lengths = torch.arange(1, 9)  # quartile edges 1, 2.75, 4.5, 6.25, 8 -> {1,2} {3,4} {5,6} {7,8}
    edges = length_bucket_edges(lengths, 4)
    assert edges == [1.0, 2.75, 4.5, 6.25, 8.0]
    rc = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    got = accuracy_by_bucket(rc, torch.full((8,), 0.5), lengths, edges)
    assert [b["count"] for b in got] == [2, 2, 2, 2]
    assert [b["accuracy"] for b in got] == [1.0, 0.5, 0.0, 1.0]
    # all lengths equal: one bucket holding everything
    one = accuracy_by_bucket(rc, torch.zeros(8), torch.full((8,), 5), length_bucket_edges(torch.full((8,), 5)))
    assert len(one) == 1 and one[0]["count"] == 8 and one[0]["accuracy"] == 5 / 8
