"""Offline scoring with Ray Data on a real local Ray cluster: exactness, best-of-N, resume, bad rows, formats."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import ROOT
from rayrm.config import ScoreConfig, load_config
from rayrm.infer import RewardScorer
from rayrm.model import read_meta
from rayrm.score import _write_best_of_n, best_of_n_block, list_input_files, run_scoring


def _cfg(export, inp, out, *overrides) -> ScoreConfig:
    base = [f"model={export}", f"input={inp}", f"output={out}", "block_rows=16", "token_budget=2048"]
    return load_config(ROOT / "configs/score/default.yaml", base + list(overrides), ScoreConfig)


def _write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def _brute_force_best(df: pd.DataFrame) -> dict:
    """Per prompt id: (id, reward, n, spread) of the highest reward, smallest id on ties; a plain loop."""
    out = {}
    for pid, g in df.groupby("prompt_id"):
        best = None
        for _, r in g.iterrows():
            if best is None or r.reward > best.reward or (r.reward == best.reward and str(r.id) < str(best.id)):
                best = r
        out[pid] = (best.id, best.reward, len(g), g.reward.max() - g.reward.min())
    return out


# ---------------------------------------------------------------- unit (no Ray)
def test_best_of_n_block_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"prompt_id": rng.integers(0, 30, 400), "id": [f"r{i:03d}" for i in range(400)],
                       "reward": rng.integers(0, 5, 400).astype(np.float32)})  # many ties
    got = best_of_n_block(df, top_k=3, pid="prompt_id", idf="id", extra=[]).set_index("prompt_id")
    ref = _brute_force_best(df)
    assert set(got.index) == set(ref)
    for pid, (bid, rew, n, spread) in ref.items():
        row = got.loc[pid]
        assert (row.best_id, row.best_reward, row.n, row.spread) == (bid, rew, n, spread)
        assert row.top_ids[0] == bid and list(row.top_rewards) == sorted(row.top_rewards, reverse=True)


def test_best_of_n_calibrated_probabilities_by_brute_force():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"prompt_id": rng.integers(0, 20, 200), "id": [f"r{i:03d}" for i in range(200)],
                       "reward": rng.normal(size=200).astype(np.float32)})
    df = pd.concat([df, pd.DataFrame({"prompt_id": [99], "id": ["alone"], "reward": [np.float32(2.0)]})])
    t = 0.7
    got = best_of_n_block(df, top_k=1, pid="prompt_id", idf="id", extra=[], temperature=t).set_index("prompt_id")
    for pid, g in df.groupby("prompt_id"):
        r = np.sort(g["reward"].to_numpy(np.float64))[::-1]
        # Plackett-Luce first place: exp(r_best / T) / sum exp(r_i / T); BT vs the runner-up: sigmoid(gap / T)
        assert got.loc[pid, "p_best"] == pytest.approx(np.exp(r[0] / t) / np.exp(r / t).sum(), abs=1e-9)
        if len(r) == 1:
            assert got.loc[pid, "p_best"] == 1.0 and np.isnan(got.loc[pid, "p_over_runner_up"])
        else:
            assert got.loc[pid, "p_over_runner_up"] == pytest.approx(1 / (1 + np.exp(-(r[0] - r[1]) / t)), abs=1e-9)
    assert "p_best" not in best_of_n_block(df, top_k=1, pid="prompt_id", idf="id", extra=[]).columns


def test_input_globs_dirs_and_missing(tmp_path):
    for name in ("a.parquet", "b.jsonl", "sub/c.parquet", "notes.txt"):
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_text("")
    assert [os.path.basename(f) for f in list_input_files(str(tmp_path))] == ["a.parquet", "b.jsonl", "c.parquet"]
    assert [os.path.basename(f) for f in list_input_files(str(tmp_path / "*.parquet"))] == ["a.parquet"]
    with pytest.raises(FileNotFoundError, match="not found"):
        list_input_files(str(tmp_path / "nope"))


# ---------------------------------------------------------------- on a real Ray cluster


@pytest.mark.integration
def test_parquet_scores_equal_single_row_scoring_and_best_of_n(ray_cluster, tiny_export, rollouts, tmp_path):
    # two Parquet files with several row groups each, read through a glob
    df = pd.DataFrame(rollouts)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pandas(df.iloc[:50]), tmp_path / "in/part0.parquet", row_group_size=20)
    pq.write_table(pa.Table.from_pandas(df.iloc[50:]), tmp_path / "in/part1.parquet", row_group_size=7)
    # task_max_calls=2: read/tokenise workers are replaced every second block while the stream runs
    summary = run_scoring(_cfg(tiny_export, str(tmp_path / "in/*.parquet"), str(tmp_path / "out"), "top_k=2",
                               "task_max_calls=2"))
    assert summary["input_rows"] == summary["rows_scored_this_run"] == len(df) and summary["bad_rows"] == 0
    out = pd.read_parquet(tmp_path / "out/rewards").sort_values("id")
    assert len(out) == len(df) and out["id"].is_unique
    assert {"prompt", "completion", "prompt_id", "kind", "reward", "reward_normalized", "model"} <= set(out.columns)
    assert set(out["id"]) == {f"part0.parquet:{i}" for i in range(50)} | {f"part1.parquet:{i}" for i in range(30)}

    # every reward equals plain transformers on that row alone
    scorer = RewardScorer(tiny_export)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_export).eval()
    ids = scorer.tokenize(out["prompt"].tolist(), out["completion"].tolist()).ids
    with torch.no_grad():
        alone = np.array([plain(input_ids=torch.tensor([s])).logits[0, 0].item() for s in ids])
    np.testing.assert_allclose(out["reward"].to_numpy(), alone, atol=1e-5)
    assert out["num_tokens"].sum() == summary["tokens"]

    best = pd.read_parquet(tmp_path / "out/best_of_n").set_index("prompt_id")
    ref = _brute_force_best(out)
    assert len(best) == len(ref) == summary["best_of_n_prompts"]
    for pid, (bid, rew, n, spread) in ref.items():
        assert best.loc[pid, "best_id"] == bid and best.loc[pid, "n"] == n
        assert abs(best.loc[pid, "best_reward"] - rew) < 1e-6 and abs(best.loc[pid, "spread"] - spread) < 1e-6
        assert best.loc[pid, "best_completion"] == out.set_index("id").loc[bid, "completion"]
    assert os.path.exists(tmp_path / "out/_SUCCESS.json")

    # best-of-N in passes over the prompt ids' hash (bounded driver memory) gives the same table as one pass
    cfg = _cfg(tiny_export, str(tmp_path / "in/*.parquet"), str(tmp_path / "out"), "top_k=2", "best_of_n_rows_per_pass=9")
    assert _write_best_of_n(cfg, read_meta(tiny_export)) == len(ref)
    assert len(os.listdir(tmp_path / "out/best_of_n")) > 1  # several passes wrote parts
    again = pd.read_parquet(tmp_path / "out/best_of_n").set_index("prompt_id").loc[best.index]
    pd.testing.assert_frame_equal(again, best)


@pytest.mark.slow
@pytest.mark.integration
def test_killed_job_resumes_and_scores_each_row_once(ray_cluster, tiny_export, rollouts, tmp_path):
    inp = _write_jsonl(tmp_path / "roll.jsonl", [{"prompt": r["prompt"], "completion": r["completion"]} for r in rollouts] * 2)
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "tests/faults.py"), "kill-scoring-after", "3", "--config",
           str(ROOT / "configs/score/default.yaml"), f"model={tiny_export}", f"input={inp}", f"output={out}", "block_rows=8"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert not os.path.exists(out / "_SUCCESS.json")  # a dead job leaves nothing that looks complete
    partial = pd.read_parquet(out / "rewards")
    assert 0 < len(partial) < 160

    summary = run_scoring(_cfg(tiny_export, inp, str(out), "block_rows=8"))
    assert summary["rows_resumed"] == len(partial) and summary["rows_scored_this_run"] == 160 - len(partial)
    final = pd.read_parquet(out / "rewards")
    assert len(final) == 160 and final["id"].is_unique
    assert set(final["id"]) == {f"roll.jsonl:{i}" for i in range(1, 161)}
    assert not [f for f in os.listdir(out / "rewards") if not f.startswith("part-")]  # no half-written files left


@pytest.mark.integration
def test_bad_rows_error_with_file_and_row_or_are_marked(ray_cluster, tiny_export, rollouts, tmp_path):
    good = [{"prompt": r["prompt"], "completion": r["completion"], "prompt_id": r["prompt_id"]} for r in rollouts[:10]]
    rows = good[:3] + ['{"prompt": "cut off', {"prompt": "p", "completion": None, "prompt_id": 1},
                       {"prompt": "p", "completion": 7, "prompt_id": 1}, {"prompt": "p", "completion": "c"}] + good[3:]
    inp = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(Exception, match=r"bad\.jsonl:row 4: undecodable line"):
        run_scoring(_cfg(tiny_export, inp, str(tmp_path / "o1")))
    summary = run_scoring(_cfg(tiny_export, inp, str(tmp_path / "o2"), "on_bad_row=mark"))
    assert summary["input_rows"] == 14 and summary["bad_rows"] == 4 and summary["bad_rows_total"] == 4
    out = pd.read_parquet(tmp_path / "o2/rewards").set_index("id")
    assert len(out) == 14  # nothing dropped
    errs = out["error"].dropna()
    assert "undecodable" in errs["bad.jsonl:4"] and "'completion' is missing or null" in errs["bad.jsonl:5"]
    assert "must be a string" in errs["bad.jsonl:6"] and "'prompt_id' is missing" in errs["bad.jsonl:7"]
    assert out.loc[errs.index, "reward"].isna().all() and out.drop(errs.index)["reward"].notna().all()
    # a Parquet row with a null prompt is named by file and row
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}, {"prompt": None, "completion": "b"}]),
                   tmp_path / "n.parquet")
    with pytest.raises(Exception, match=r"n\.parquet:row 1: field 'prompt' is missing or null"):
        run_scoring(_cfg(tiny_export, str(tmp_path / "n.parquet"), str(tmp_path / "o3")))


def test_actor_pool_must_leave_cpu_for_tokenisation():
    from rayrm.config import ConfigError, ScoreConfig
    from rayrm.score import check_cpu_room

    cfg = ScoreConfig(model="m", input="i", output="o", num_actors=2, cpus_per_actor=1.0)
    with pytest.raises(ConfigError, match=r"num_actors x cpus_per_actor = 2 x 1 CPUs leaves 0 of the cluster's 2 CPUs"
                                          r".*need 1: .*cpus_per_actor=0.5"):
        check_cpu_room(cfg, 2.0)  # every CPU held by actors: the feeding tasks could never run (a silent hang)
    check_cpu_room(cfg, 3.0)
    check_cpu_room(cfg.model_copy(update={"cpus_per_actor": 0.5}), 2.0)  # 1 + 1 for the feeding tasks fits
