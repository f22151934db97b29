"""End-of-training eval report: numbers pinned by hand, strict JSON, real PNGs (no Ray, no model)."""

import json
import os

import pytest
import torch

from rayrm.metrics import pair_ece
from rayrm.report import build_eval_report, eval_report, reward_histograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(path):
    def no_nan(name):
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(open(path).read(), parse_constant=no_nan)


def test_report_numbers_by_hand():
    # pairs 0,1 are short (10, 20 tokens), pairs 2,3 long (30, 40); 2 buckets split at the median 25
    r_c = torch.tensor([2.0, 3.0, 0.0, 3.0])
    r_r = torch.tensor([0.0, 2.0, 1.0, 0.0])
    rep = build_eval_report(r_c, r_r, [10, 20, 30, 40], n_length_buckets=2, n_bins=10, temperature=2.0)
    assert rep["num_pairs"] == 4 and rep["accuracy"] == 0.75  # pair 2 is ranked wrong
    assert rep["margin"] == pytest.approx((2 + 1 - 1 + 3) / 4)
    assert [(b["lo"], b["hi"], b["count"], b["accuracy"]) for b in rep["accuracy_by_length"]] == [
        (10.0, 25.0, 2, 1.0), (25.0, 40.0, 2, 0.5)]
    # calibrated ECE is the ECE of the rewards divided by T; the raw one uses T = 1
    assert rep["ece"] == pytest.approx(pair_ece(r_c / 2, r_r / 2)) and rep["ece_raw"] == pytest.approx(pair_ece(r_c, r_r))
    assert sum(b["count"] for b in rep["reliability"]) == 8  # each pair in both orders
    assert rep["chosen_mean"] == 2.0 and rep["rejected_mean"] == 0.75
    h = rep["reward_hist"]
    assert sum(h["chosen"]) == sum(h["rejected"]) == 4 and h["edges"][0] == 0.0 and h["edges"][-1] == 3.0


def test_histograms_share_bins():
    h = reward_histograms(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.0]), bins=3)  # edges -1, 0, 1, 2
    assert h["edges"] == [-1.0, 0.0, 1.0, 2.0]
    assert h["chosen"] == [0, 0, 2] and h["rejected"] == [1, 1, 0]  # numpy's last bin is closed


def test_eval_report_writes_pngs_and_strict_json(tmp_path):
    g = torch.Generator().manual_seed(0)
    r_c, r_r = torch.randn(200, generator=g) + 1, torch.randn(200, generator=g)
    lengths = torch.randint(5, 300, (200,), generator=g)
    rep = eval_report(r_c, r_r, lengths, str(tmp_path / "report"))
    for name in ("reliability", "accuracy_by_length", "reward_hist"):
        assert open(rep["files"][name], "rb").read(8) == PNG_MAGIC
    saved = _strict_json(rep["files"]["json"])  # empty reliability bins are null, not NaN
    assert saved["num_pairs"] == 200 and len(saved["accuracy_by_length"]) == 4
    assert abs(saved["accuracy"] - float((r_c > r_r).float().mean())) < 1e-12


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"\(n,\)"):
        build_eval_report(torch.zeros(3), torch.zeros(3), [1, 2])


def test_json_can_be_left_to_the_caller(tmp_path):
    rep = build_eval_report(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]), [3, 4], n_length_buckets=1)
    from rayrm.report import write_eval_report

    files = write_eval_report(rep, str(tmp_path), json_name=None)  # the monitor writes its own report.json
    assert "json" not in files and sorted(os.listdir(tmp_path)) == ["accuracy_by_length.png", "reliability.png",
                                                                     "reward_hist.png"]
