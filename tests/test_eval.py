"""`rayrm eval`: suites in both RewardBench row shapes, read and checked; on a real local Ray cluster, per-subset
accuracy equal to a brute-force single-row `transformers` computation, A/B differences, and the gate."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import ROOT
from rayrm.config import EvalConfig, load_config
from rayrm.data import BadRowError
from rayrm.eval import (
    accuracy_by_length,
    accuracy_table,
    calibration,
    ordered_pairs,
    read_suite,
    row_lengths,
    run_eval,
    ties_table,
    units_of,
    write_plots,
)
from rayrm.infer import RewardScorer
from rayrm.metrics import pair_ece


def _cfg(inp, out, *overrides) -> EvalConfig:
    return load_config(ROOT / "configs/eval/default.yaml", [f"input={inp}", f"output={out}", "token_budget=2048",
                                                            *overrides], EvalConfig)


def _write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _pairs(hh_rows, n=24) -> list[dict]:
    """HH pairs as RewardBench v1 rows, in two subsets named after v1's (so sections are computed)."""
    return [{"id": f"p{i}", "prompt": r["prompt"][-300:], "chosen": r["chosen"], "rejected": r["rejected"],
             "subset": "alpacaeval-easy" if i % 3 else "mt-bench-hard"} for i, r in enumerate(hh_rows[:n])]


def _best_of_4(hh_rows, n=12) -> list[dict]:
    """RewardBench 2's shape: one chosen and three rejected (its own rejected and two other rows' responses)."""
    rows = hh_rows[: n + 2]
    return [{"id": f"b{i}", "prompt": rows[i]["prompt"][-300:], "chosen": [rows[i]["chosen"]],
             "rejected": [rows[i]["rejected"], rows[i + 1]["rejected"], rows[i + 2]["chosen"]],
             "subset": "Focus" if i % 2 else "Math"} for i in range(n)]


def test_read_suite_detects_both_shapes_and_dedupes_units(tmp_path, hh_rows):
    pairs = _pairs(hh_rows, 6) + _pairs(hh_rows, 2)  # the last two rows repeat completions
    rows, fmt, _ = read_suite(_cfg(_write_jsonl(tmp_path / "p.jsonl", pairs), tmp_path / "o", "model=x"))
    assert fmt == "pairs" and len(rows) == 8 and rows[0]["chosen"] == [pairs[0]["chosen"]]
    units, chosen, rejected = units_of(rows)
    assert len(units) == 12 and chosen[6] == chosen[0] and rejected[7] == rejected[1]  # each completion once
    rows, fmt, _ = read_suite(_cfg(_write_jsonl(tmp_path / "b.jsonl", _best_of_4(hh_rows, 3)), tmp_path / "o",
                                   "model=x"))
    assert fmt == "best_of_n" and [len(r["rejected"]) for r in rows] == [3, 3, 3] and rows[1]["subset"] == "Focus"


def _ties(hh_rows, n=4) -> list[dict]:
    """RewardBench 2's Ties rows: per prompt a `ref` row (one correct answer) and a `tied` row (two)."""
    out = []
    for i in range(n):
        a, b, c = hh_rows[20 + 3 * i: 23 + 3 * i]
        prompt = a["prompt"][-300:]
        out.append({"id": f"ref:{i}", "prompt": prompt, "chosen": [a["chosen"]], "rejected": [b["rejected"],
                    c["rejected"]], "subset": "Ties"})
        out.append({"id": f"tied:{i}", "prompt": prompt, "chosen": [a["chosen"], b["chosen"]],
                    "rejected": [c["rejected"]], "subset": "Ties"})
    return out


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"id": "7"}, "field 'id': a Ties row's id must be 'ref:<prompt id>'"),
        ({"id": "tied:0"}, "field 'chosen': a 'tied' Ties row needs two or more correct answers"),
        ({"id": "ref:0"}, "field 'id': a second Ties row 'ref:0'"),
    ],
)
def test_bad_ties_rows_name_the_field(tmp_path, bad, needle):
    good = {"id": "ref:0", "prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Ties"}
    path = _write_jsonl(tmp_path / "ties.jsonl", [good, {**good, **bad}])
    with pytest.raises(BadRowError, match=needle) as e:
        read_suite(_cfg(path, tmp_path / "o", "model=x"))
    assert "ties.jsonl:line 2" in str(e.value)
    rows, _, report = read_suite(_cfg(path, tmp_path / "o", "model=x", "on_bad_row=skip"))
    assert len(rows) == 1 and report.skipped == 1 and rows[0]["ties"] == ("ref", "0")


def test_results_without_ray_ties_calibration_length_and_plots(tmp_path, hh_rows):
    """The result tables from rewards given by hand: Ties score in its subset, v2 sections, ECE, plots on disk."""
    suite = _best_of_4(hh_rows, 4) + _ties(hh_rows, 3)
    rows, fmt, _ = read_suite(_cfg(_write_jsonl(tmp_path / "s.jsonl", suite), tmp_path / "o", "model=x"))
    units, chosen, rejected = units_of(rows)
    rewards = np.random.default_rng(0).normal(size=len(units))
    from rayrm.eval import credits

    credit = credits(rewards, chosen, rejected, fmt)
    table, idx = ties_table(rewards, rows, chosen, rejected)
    credit[idx] = table.row_accurate
    subsets = np.asarray([r["subset"] for r in rows])
    res = accuracy_table(credit, subsets, table, 300, 0)
    assert res["subsets"]["Ties"]["accuracy"] == pytest.approx(table.score()) and res["subsets"]["Ties"]["n"] == 6
    assert res["benchmark"] == "RewardBench 2" and set(res["sections"]) == {"Math", "Focus", "Ties", "Score"}
    assert res["sections"]["Score"] == pytest.approx(np.mean([res["subsets"][s]["accuracy"]
                                                              for s in ("Math", "Focus", "Ties")]))
    better, worse = ordered_pairs(rewards, chosen, rejected, fmt)
    assert better.size == 4 * 3 + 3 * (1 * 2 + 2 * 1)  # best-of-4: 3 per row; ties: ref 1x2, tied 2x1
    cal = calibration(better, worse)
    assert cal["pairs"] == better.size and 0 <= cal["ece"] <= 1 and sum(b["count"] for b in cal["reliability"]) == \
        2 * better.size
    lengths = row_lengths(rows)
    assert lengths[0] == len(suite[0]["prompt"]) + max(len(x) for x in suite[0]["chosen"] + suite[0]["rejected"])
    buckets = accuracy_by_length(credit, lengths, [float(lengths.min()), float(np.median(lengths)),
                                                   float(lengths.max())])
    assert sum(b["count"] for b in buckets) == len(rows)
    m = {**res, "calibration": cal, "by_length": buckets}
    files = write_plots({"models": [m, m]}, str(tmp_path))
    assert set(files) == {"accuracy_by_subset", "reliability_0", "reliability_1", "accuracy_by_length_0",
                          "accuracy_by_length_1"}
    for f in files.values():
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def _ranked(hh_rows, n=10) -> list[dict]:
    """Ranked rows as training reads them: 3 completions, by `ranking` (1 = best) or by `scores` with a tie."""
    out = []
    for i in range(n):
        r = hh_rows[i]
        comps = [r["chosen"], r["rejected"], hh_rows[i + 1]["rejected"]]
        row = {"id": f"k{i}", "prompt": r["prompt"][-300:], "completions": comps, "subset": "ranked"}
        row.update({"ranking": [2, 1, 3]} if i % 2 else {"scores": [5.0, 1.0, 1.0]})
        out.append(row)
    return out


def test_ranked_rows_keep_their_levels(tmp_path, hh_rows):
    rows, fmt, _ = read_suite(_cfg(_write_jsonl(tmp_path / "k.jsonl", _ranked(hh_rows, 2)), tmp_path / "o",
                                   "model=x"))
    assert fmt == "ranked" and rows[0]["levels"] == [-5.0, -1.0, -1.0] and rows[1]["levels"] == [2.0, 1.0, 3.0]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completions": ["a", "b"], "scores": [1, 1]}])
    with pytest.raises(BadRowError, match="bad.jsonl:line 1: field 'scores' ranks no completion above another"):
        read_suite(_cfg(bad, tmp_path / "o", "model=x"))


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"prompt": "p", "chosen": ["a"], "rejected": []}, "field 'rejected' must be a non-empty list"),
        ({"prompt": "p", "chosen": ["a"], "rejected": ["b", 3]}, r"field 'rejected\[1\]' must be a string"),
        ({"prompt": "p", "chosen": ["a"]}, "field 'rejected' must be a non-empty list"),
    ],
)
def test_bad_best_of_n_rows_name_file_row_and_field(tmp_path, bad, needle):
    good = {"prompt": "p", "chosen": ["a"], "rejected": ["b"]}
    path = _write_jsonl(tmp_path / "suite.jsonl", [good, bad, good])
    with pytest.raises(BadRowError, match=needle) as e:
        read_suite(_cfg(path, tmp_path / "o", "model=x"))
    assert "suite.jsonl:line 2" in str(e.value)
    rows, _, report = read_suite(_cfg(path, tmp_path / "o", "model=x", "on_bad_row=skip"))
    assert len(rows) == 2 and report.skipped == 1  # counted, never silently dropped


def test_a_line_that_is_not_json_names_its_line(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": ["a"], "rejected": ["b"]}) + "\n{not json\n")
    with pytest.raises(BadRowError, match="suite.jsonl:line 2"):
        read_suite(_cfg(path, tmp_path / "o", "model=x"))


def test_bad_pair_rows_name_the_field(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                    {"prompt": "p", "chosen": "a"}])
    with pytest.raises(BadRowError, match=r"pairs.jsonl:line 2: missing field 'rejected'"):
        read_suite(_cfg(path, tmp_path / "o", "model=x", "format=pairs"))


def _alone(export: str, rows: list[dict]) -> tuple[list[list[float]], list[list[float]]]:
    """Every completion of every row scored on its own through plain transformers (no rayrm read-out, no batching)."""
    tok = RewardScorer(export)
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()

    def one(prompt, completion) -> float:
        ids = tok.tokenize([prompt], [completion]).ids[0]
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

    as_list = (lambda x: x if isinstance(x, list) else [x])
    return ([[one(r["prompt"], c) for c in as_list(r["chosen"])] for r in rows],
            [[one(r["prompt"], c) for c in as_list(r["rejected"])] for r in rows])


def _brute_accuracy(rows, chosen, rejected, pairs: bool) -> dict[str, float]:
    """Per subset by hand: a pair counts when chosen > rejected; a best-of-N row 1/k of a k-way tie at the top."""
    credit: dict[str, list[float]] = {}
    for r, c, x in zip(rows, chosen, rejected):
        top = max(max(c), max(x))
        k = sum(v == top for v in c) + sum(v == top for v in x)
        bon = sum(v == top for v in c) / k if max(c) >= max(x) else 0.0
        credit.setdefault(r["subset"], []).append(float(c[0] > x[0]) if pairs else bon)
    return {s: float(np.mean(v)) for s, v in credit.items()}


@pytest.mark.integration
def test_pairs_suite_matches_brute_force_with_ab(ray_cluster, tmp_path, hh_rows, tiny_export, minilm_export):
    rows = _pairs(hh_rows)
    path = _write_jsonl(tmp_path / "suite.jsonl", rows)
    out = tmp_path / "eval"
    res = run_eval(_cfg(path, out, f"model=[{tiny_export},{minilm_export}]", "bootstrap=500"))
    assert res["format"] == "pairs" and res["rows"] == 24 and res["units"] == 48
    for i, export in enumerate((tiny_export, minilm_export)):
        c, r = _alone(export, rows)
        want = _brute_accuracy(rows, c, r, pairs=True)
        got = res["models"][i]["subsets"]
        assert {s: v["accuracy"] for s, v in got.items()} == pytest.approx(want, abs=1e-12)
        assert got["mt-bench-hard"]["n"] == 8 and got["alpacaeval-easy"]["n"] == 16
        lo, hi = got["mt-bench-hard"]["ci95"]
        assert lo <= got["mt-bench-hard"]["accuracy"] <= hi
        assert set(res["models"][i]["sections"]) == {"Chat", "Chat Hard", "Score"}
        ece = pair_ece(torch.tensor([x[0] for x in c], dtype=torch.float64), torch.tensor([x[0] for x in r],
                                                                                           dtype=torch.float64))
        assert res["models"][i]["calibration"]["ece"] == pytest.approx(ece, abs=1e-4)
    ab = res["models"][1]["vs_first"]["overall"]
    a0, a1 = res["models"][0]["overall"]["accuracy"], res["models"][1]["overall"]["accuracy"]
    assert ab["difference"] == pytest.approx(a1 - a0) and ab["ci95"][0] <= ab["difference"] <= ab["ci95"][1]
    assert res["gate_failures"] == []
    table = pd.read_parquet(out / "scores.parquet")
    assert len(table) == 24 and list(table["id"][:2]) == ["p0", "p1"]
    assert json.loads((out / "results.json").read_text())["rows"] == 24
    assert "| overall | 24 |" in (out / "summary.md").read_text()


@pytest.mark.integration
def test_ranked_suite_matches_brute_force(ray_cluster, tmp_path, hh_rows, tiny_export):
    rows = _ranked(hh_rows)
    res = run_eval(_cfg(_write_jsonl(tmp_path / "k.jsonl", rows), tmp_path / "eval", f"model={tiny_export}"))
    c, _ = _alone(tiny_export, [{"prompt": r["prompt"], "chosen": r["completions"], "rejected": []} for r in rows])
    want = []
    for r, rew in zip(rows, c):  # by hand: every pair (i ranked above j) whose rewards agree
        lv = r["ranking"] if "ranking" in r else [-x for x in r["scores"]]
        pairs = [(i, j) for i in range(3) for j in range(3) if lv[i] < lv[j]]
        want.append(sum(rew[i] > rew[j] for i, j in pairs) / len(pairs))
    assert res["format"] == "ranked"
    assert res["models"][0]["subsets"]["ranked"]["accuracy"] == pytest.approx(np.mean(want), abs=1e-12)


def _brute_ties(rows, chosen, rejected) -> float:
    """RewardBench 2's Ties score written out from its definition, one prompt at a time."""
    by = {(r["id"].split(":")[0], r["id"].split(":")[1]): (c, x) for r, c, x in zip(rows, chosen, rejected)
          if r["subset"] == "Ties"}
    acc = {k: [float(min(c) > max(x)) for (kk, _), (c, x) in by.items() if kk == k] for k in ("ref", "tied")}
    pref, hard, margin = [], [], []
    for (kind, p), (c, x) in by.items():
        if kind != "tied" or ("ref", p) not in by:
            continue
        rc, rx = by[("ref", p)]
        spread, gap, ref_gap = max(c) - min(c), min(c) - max(x), min(rc) - max(rx)
        pref.append(gap > spread)
        hard.append(min(gap, ref_gap) > spread)
        margin.append(np.tanh(min(gap, ref_gap) / spread - 1))
    return (0.3 * np.mean(acc["tied"]) + 0.3 * np.mean(acc["ref"]) + 0.2 * np.mean(pref) + 0.2 * np.mean(hard)
            + 0.01 * np.mean(margin))


@pytest.mark.integration
def test_best_of_4_suite_with_ties_and_the_gate(ray_cluster, tmp_path, hh_rows, tiny_export):
    rows = _best_of_4(hh_rows) + _ties(hh_rows)
    path = _write_jsonl(tmp_path / "bon.jsonl", rows)
    out = tmp_path / "eval"
    res = run_eval(_cfg(path, out, f"model={tiny_export}", "fail_below=1.0"))
    assert res["format"] == "best_of_n" and res["units"] == len({(r["prompt"], c) for r in rows
                                                                 for c in r["chosen"] + r["rejected"]})
    c, r = _alone(tiny_export, rows)
    m = res["models"][0]
    got = {s: v["accuracy"] for s, v in m["subsets"].items()}
    want = _brute_accuracy(rows[:12], c[:12], r[:12], pairs=False)
    want["Ties"] = _brute_ties(rows, c, r)
    assert got == pytest.approx(want, abs=1e-9)
    assert m["benchmark"] == "RewardBench 2" and m["sections"]["Score"] == pytest.approx(np.mean(list(want.values())))
    lo, hi = m["subsets"]["Ties"]["ci95"]
    assert lo <= want["Ties"] <= hi and m["subsets"]["Ties"]["n"] == 8
    assert m["calibration"]["pairs"] == 12 * 3 + 4 * (2 + 2)
    assert sum(b["count"] for b in m["by_length"]) == len(rows)
    assert res["gate_failures"] and "fail_below 1.0" in res["gate_failures"][0]  # accuracy < 1: the gate fails
    assert (out / "summary.md").exists() and (out / res["plots"]["reliability_0"]).exists()
    # the same output dir again with another suite: nothing of the first run's rewards is reused
    again = run_eval(_cfg(_write_jsonl(tmp_path / "bon2.jsonl", rows[::-1]), out, f"model={tiny_export}"))
    flipped = {s: v["accuracy"] for s, v in again["models"][0]["subsets"].items()}
    assert flipped == pytest.approx(got, abs=1e-9)
