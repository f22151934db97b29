"""Metric math pinned with hand-derived numbers."""

import torch

from rayrm.metrics import (
    best_of_n,
    expected_calibration_error,
    mean_margin,
    pair_ece,
    pairwise_accuracy,
    preference_metrics,
    size_weighted_mean,
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
