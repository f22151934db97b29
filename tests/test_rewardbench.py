"""RewardBench row rules, Wilson intervals, section weights and the paired bootstrap, against numbers by hand."""

import math

import numpy as np
import pytest

from rayrm.rewardbench import (
    V1_EXAMPLE_COUNTS,
    V1_SECTIONS,
    TiesTable,
    best_of_n_credit,
    bootstrap_ties,
    pair_credit,
    paired_bootstrap,
    ranked_credit,
    ties_id,
    v1_sections,
    v2_sections,
    wilson_interval,
)


def test_pair_credit_is_strict():
    assert pair_credit([2.0, 1.0, 1.0], [1.0, 1.0, 3.0]).tolist() == [1.0, 0.0, 0.0]  # a tie is wrong (v1)


@pytest.mark.parametrize(
    "chosen, rejected, credit",
    [
        ([3.0], [1.0, 2.0, 0.0], 1.0),  # chosen above every rejected
        ([1.0], [2.0, 0.0, 0.0], 0.0),  # one rejected above it
        ([2.0], [2.0, 1.0, 0.0], 1 / 2),  # 2-way tie at the top
        ([2.0], [2.0, 2.0, 1.0], 1 / 3),  # 3-way tie
        ([2.0], [2.0, 2.0, 2.0], 1 / 4),  # all four tie
        ([1.0], [2.0, 2.0, 0.0], 0.0),  # a tie above the chosen does not help it
        ([2.0, 2.0], [2.0, 1.0], 2 / 3),  # two chosen among three tied at the top
    ],
)
def test_best_of_n_credit(chosen, rejected, credit):
    assert math.isclose(best_of_n_credit(chosen, rejected), credit)


def test_best_of_n_needs_both_sides():
    with pytest.raises(ValueError, match="at least one chosen and one rejected"):
        best_of_n_credit([1.0], [])


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 10)  # p = 0: lo 0, hi = z^2 / (n + z^2)
    assert lo == 0.0 and math.isclose(hi, z * z / (10 + z * z), rel_tol=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert math.isclose(lo, 10 / (10 + z * z), rel_tol=1e-12) and math.isclose(hi, 1.0)
    # p = 1/2, n = 100: centre 1/2, half-width z * sqrt(1/400 + z^2/40000) / (1 + z^2/100)
    lo, hi = wilson_interval(50, 100)
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert math.isclose(lo, 0.5 - half, rel_tol=1e-12) and math.isclose(hi, 0.5 + half, rel_tol=1e-12)
    a, b = wilson_interval(7, 20), wilson_interval(13, 20)  # mirror image
    assert math.isclose(a[0], 1 - b[1]) and math.isclose(a[1], 1 - b[0])
    assert wilson_interval(7.5, 20)[0] > wilson_interval(7, 20)[0]  # tie credit counts fractionally


def test_v1_sections_weight_subsets_by_example_count():
    got = v1_sections({"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0, "math-prm": 0.5, "hep-go": 1.0})
    assert math.isclose(got["Chat"], 100 / 128)  # weights 100 and 28
    assert math.isclose(got["Reasoning"], (984 * 0.5 + 164 * 1.0) / (984 + 164))  # math-prm upweighted
    assert "Safety" not in got and "Chat Hard" not in got  # no subset of theirs present
    assert math.isclose(got["Score"], (got["Chat"] + got["Reasoning"]) / 2)
    assert sorted(s for ss in V1_SECTIONS.values() for s in ss) == sorted(V1_EXAMPLE_COUNTS)  # every subset weighted


def test_paired_bootstrap_known_answers():
    ones, zeros = np.ones(50), np.zeros(50)
    assert paired_bootstrap(ones, ones) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(ones, zeros) == (1.0, 1.0, 1.0)
    a = np.r_[np.ones(30), np.zeros(70)]  # a wins 30 rows of 100, b none: difference 0.3, standard error ~0.046
    diff, lo, hi = paired_bootstrap(a, np.zeros(100), n_boot=4000, seed=1)
    assert math.isclose(diff, 0.3) and 0.19 < lo < 0.23 and 0.37 < hi < 0.41
    assert paired_bootstrap(a, np.zeros(100), n_boot=4000, seed=1) == (diff, lo, hi)  # seeded


def test_ranked_credit_counts_ordered_pairs():
    # levels: completion 0 best, 1 and 2 tied second (no pair between them), 3 last -> 5 ordered pairs
    levels = [1, 2, 2, 3]
    assert ranked_credit([4.0, 3.0, 2.0, 1.0], levels) == 1.0
    assert ranked_credit([1.0, 2.0, 3.0, 4.0], levels) == 0.0
    # pairs (0,1) 3>4 no, (0,2) 3>1 yes, (0,3) 3>2 yes, (1,3) 4>2 yes, (2,3) 1>2 no
    assert math.isclose(ranked_credit([3.0, 4.0, 1.0, 2.0], levels), 3 / 5)
    with pytest.raises(ValueError, match="different rank"):
        ranked_credit([1.0, 2.0], [1, 1])


def _ties_rows():
    """Three prompts built by hand: chosen = the correct answers, rejected = the incorrect ones."""
    return [
        ("ref", "1", [3.0], [1.0, 2.0]),  # gap 1: accurate
        ("tied", "1", [3.0, 2.5], [1.0]),  # gap 1.5, spread 0.5: accurate
        ("ref", "2", [0.0], [1.0]),  # gap -1
        ("tied", "2", [2.0, 0.0], [1.5]),  # gap -1.5, spread 2
        ("ref", "3", [1.0], [0.0]),  # gap 1: accurate; no tied row for prompt 3
    ]


def test_ties_score_by_hand():
    kinds, prompts, c, r = zip(*_ties_rows())
    t = TiesTable(kinds, prompts, c, r)
    got = t.components()
    assert got["ref_accuracy"] == pytest.approx(2 / 3) and got["tied_accuracy"] == pytest.approx(1 / 2)
    # prompt 1: 1.5 > 0.5 and min(1, 1.5) > 0.5; prompt 2: -1.5 > 2 no, min(-1, -1.5) > 2 no
    assert got["correctness_preferred"] == pytest.approx(0.5) and got["correctness_preferred_hard"] == pytest.approx(0.5)
    margin = (math.tanh(1 / 0.5 - 1) + math.tanh(-1.5 / 2 - 1)) / 2
    assert got["margin_score"] == pytest.approx(margin)
    want = 0.3 * 0.5 + 0.3 * 2 / 3 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * margin
    assert got["score"] == pytest.approx(want, abs=1e-12) and t.score() == got["score"]
    assert t.row_accurate.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_ties_equal_correct_answers_and_order_of_rows():
    # two correct answers with the same reward: spread 0, the margin term saturates (tanh(+inf) = 1)
    t = TiesTable(["tied", "ref"], ["a", "a"], [[2.0, 2.0], [2.0]], [[1.0], [0.5]])
    got = t.components()
    assert got["margin_score"] == 1.0 and got["correctness_preferred"] == 1.0 and got["score"] == pytest.approx(1.01)
    rows = _ties_rows()
    kinds, prompts, c, r = zip(*rows[::-1])
    assert TiesTable(kinds, prompts, c, r).score() == pytest.approx(TiesTable(*zip(*rows)).score())
    with pytest.raises(ValueError, match="two 'ref:1' rows"):
        TiesTable(["ref", "ref"], ["1", "1"], [[1.0], [1.0]], [[0.0], [0.0]])


def test_ties_ids():
    assert ties_id("ref:12") == ("ref", "12") and ties_id("tied:x:y") == ("tied", "x:y")
    for bad in ("12", "ref:", "best:3"):
        with pytest.raises(ValueError, match="'ref:<prompt id>' or 'tied:<prompt id>'"):
            ties_id(bad)


def test_ties_bootstrap_resamples_prompts():
    kinds, prompts, c, r = zip(*_ties_rows())
    a = TiesTable(kinds, prompts, c, r)
    score, lo, hi = bootstrap_ties(a, n_boot=500, seed=1)
    assert score == a.score() and lo <= score <= hi and hi - lo > 0.1  # 3 prompts: a wide interval
    assert bootstrap_ties(a, n_boot=500, seed=1) == (score, lo, hi)  # seeded
    assert bootstrap_ties(a, a, n_boot=200) == (0.0, 0.0, 0.0)  # against itself: exactly 0
    # weights: prompt 1 twice, prompt 2 never -> ref accuracy 3/3, tied 2/2
    w = np.asarray([2.0, 0.0, 1.0])  # prompts sorted: "1", "2", "3"
    assert a.components(w)["ref_accuracy"] == 1.0 and a.components(w)["tied_accuracy"] == 1.0


def test_v2_sections_are_the_plain_average():
    acc = {"Factuality": 0.6, "precise if": 0.4, "Math": 0.7, "Safety": 0.8, "Focus": 0.5, "Ties": 0.3, "other": 0.0}
    got = v2_sections(acc)
    assert set(got) == {"Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties", "Score"}
    assert got["Precise IF"] == 0.4 and got["Score"] == pytest.approx((0.6 + 0.4 + 0.7 + 0.8 + 0.5 + 0.3) / 6)
    assert v2_sections({"other": 1.0}) == {}
