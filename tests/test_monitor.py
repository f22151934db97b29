"""Canary monitor: a real tiny RM trained with run_training on a learnable synthetic preference set, scored for real
with RewardScorer; a clean canary passes (exit 0), one with half its labels flipped fails (exit 1), a broken run
exits 2. Threshold logic is pinned by hand."""

import json
import os
import random
import runpy
import subprocess
import sys

import pytest

from conftest import MINILM, ROOT, TINY_QWEN3
from rayrm.config import MonitorConfig, TrainConfig, load_config
from rayrm.monitor import check_thresholds, drift_metrics, run_monitor

WORDS = "the a cat dog house tree river blue green small large quick slow happy sad city road music book water".split()


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Random prompts and responses; the chosen one always ends "thank you so much", the rejected "go away now":
    learnable in a dozen steps by a 2-layer model, so the RM ranks fresh pairs from the same source correctly."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Human: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + "?\n\nAssistant:"
        body = " " + " ".join(rng.choices(WORDS, k=rng.randint(3, 10)))
        rows.append({"prompt": prompt, "chosen": body + " thank you so much", "rejected": body + " go away now"})
    return rows


def _write(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def trained_export(ray_cluster, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("monitor_rm")
    data = _write(d / "train.jsonl", synthetic_pairs(128, seed=0))
    cfg = load_config(None, [
        "name=monitor-rm", f"output_dir={d}", f"model={TINY_QWEN3}", f"tokenizer={MINILM}", f"data.path={data}",
        "data.max_length=48", "data.eval_fraction=0.25", "scaling.num_workers=1", "deepspeed.zero_stage=0",
        "train.micro_batch_size=8", "train.eval_batch_size=16", "optim.lr=1e-3", "train.log_every=4",
    ], TrainConfig)
    m = run_training(cfg)
    assert m["eval_accuracy"] >= 0.9, m  # the synthetic task is learnt: the canary accuracy is meaningful
    return str(d / "final")


def run_training(cfg):
    from rayrm.train import run_training as _run

    return _run(cfg)


@pytest.fixture(scope="module")
def canaries(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("canary")
    clean = synthetic_pairs(64, seed=1)  # fresh pairs from the training distribution
    drifted = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if i % 2 else r for i, r in enumerate(clean)]
    return {"clean": _write(d / "clean.jsonl", clean), "drifted": _write(d / "drifted.jsonl", drifted)}


def _mcfg(model, canary, out, *overrides) -> MonitorConfig:
    return load_config(ROOT / "configs/monitor/default.yaml", [f"model={model}", f"canary={canary}", f"output={out}",
                       *overrides], MonitorConfig)


# ---------------------------------------------------------------- threshold logic by hand (no model)
def test_drift_and_thresholds_by_hand():
    current = {"accuracy": 0.7, "ece": 0.12, "reward_mean": 1.5, "reward_std": 3.0}
    meta = {"metrics": {"eval_accuracy": 0.8}, "reward_mean": 1.0, "reward_std": 2.0}
    drift = drift_metrics(current, meta)
    assert drift["accuracy_drop"] == pytest.approx(0.1) and drift["mean_shift"] == 0.25 and drift["std_ratio"] == 1.5
    th = {"min_accuracy": 0.6, "max_accuracy_drop": 0.05, "max_ece": 0.1, "max_mean_shift": 0.5, "max_std_ratio": 2.0}
    verdict = {c["name"]: c["ok"] for c in check_thresholds(current, drift, th)}
    assert verdict == {"min_accuracy": True, "max_accuracy_drop": False, "max_ece": False, "max_mean_shift": True,
                       "max_std_ratio": True}
    # a std ratio below 1/max alerts too; a null threshold is not checked; a missing reference cannot alert
    low = drift_metrics({**current, "reward_std": 0.9}, meta)
    checks = check_thresholds(current, low, {**th, "max_ece": None, "max_accuracy_drop": 0.2})
    assert [c["name"] for c in checks if not c["ok"]] == ["max_std_ratio"]
    no_ref = check_thresholds(current, drift_metrics(current, {}), {"max_mean_shift": 0.1, "max_accuracy_drop": 0.0})
    assert all(c["ok"] and "not checked" in c["rule"] for c in no_ref)


# ---------------------------------------------------------------- a real model
@pytest.mark.integration
def test_clean_canary_passes(trained_export, canaries, tmp_path):
    rep = run_monitor(_mcfg(trained_export, canaries["clean"], tmp_path / "clean"))
    assert rep["passed"], rep["alerts"]
    assert rep["metrics"]["accuracy"] >= 0.9 and rep["counts"]["pairs"] == 64
    assert abs(rep["drift"]["mean_shift"]) < 0.5 and 0.5 < rep["drift"]["std_ratio"] < 2
    for name in ("report", "summary", "reliability", "accuracy_by_length", "reward_hist"):
        assert os.path.getsize(rep["files"][name]) > 0
    saved = json.load(open(rep["files"]["report"]))
    assert saved["passed"] is True and saved["reference"]["eval_accuracy"] >= 0.9
    assert open(rep["files"]["summary"]).read().startswith("# Reward-model canary: PASSED")


@pytest.mark.integration
def test_flipped_canary_fails_with_exit_1(trained_export, canaries, tmp_path):
    out = tmp_path / "drifted"
    r = subprocess.run([sys.executable, "jobs/monitor.py", "--config", "configs/monitor/default.yaml",
                        f"model={trained_export}", f"canary={canaries['drifted']}", f"output={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.load(open(out / "report.json"))
    assert not rep["passed"] and 0.4 <= rep["metrics"]["accuracy"] <= 0.6  # half the labels flipped
    failed = {c["name"] for c in rep["checks"] if not c["ok"]}
    assert {"min_accuracy", "max_accuracy_drop", "max_ece"} <= failed
    assert "ALERT" in open(out / "summary.md").read()


@pytest.mark.integration
def test_monitor_exit_2_when_it_cannot_judge(trained_export, canaries, tmp_path, monkeypatch, capsys):
    main = runpy.run_path(str(ROOT / "jobs/monitor.py"), run_name="monitor_cli")["main"]
    monkeypatch.setattr(sys, "argv", ["monitor", "--config", str(ROOT / "configs/monitor/default.yaml"),
                                      f"model={trained_export}", f"canary={canaries['clean']}",
                                      f"output={tmp_path}", "min_pairs=100"])  # 64 pairs are too few to judge
    assert main() == 2
    assert "fewer than min_pairs=100" in capsys.readouterr().err
