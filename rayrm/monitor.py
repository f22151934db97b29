"""Canary monitoring: does a deployed reward model still rank fresh on-policy comparisons the way it did in training?

`run_monitor(cfg)` scores a canary preference set (prompt/chosen/rejected, any format `rayrm.data.read_preferences`
reads) with the export's own `RewardScorer` (the exact scoring path of offline scoring and serving) and compares:

- pairwise accuracy, and its drop against the held-out accuracy stored in rayrm.json (`metrics.eval_accuracy`);
- calibration: ECE of P(chosen wins) = sigmoid((r_c - r_r) / T), T from rayrm.json (`temperature`, else 1), with a
  reliability diagram;
- reward drift against the training stats in rayrm.json (`reward_mean`, `reward_std` over the eval split's chosen
  and rejected rewards): standardized mean shift (mean_canary - mean_train) / std_train and std ratio
  std_canary / std_train. A policy drifting to texts the RM never saw moves these before accuracy is measurable.

It writes `report.json`, `summary.md` and three PNGs (rayrm.report) to `cfg.output` and returns the report; `passed`
is False when any configured threshold is crossed (jobs/monitor.py exits 1 then, so a scheduler can alert).

Each response is scored on its own, as scoring and serving see a rollout; training cut a too-long pair's prompt once
for both responses, so on pairs longer than max_length the two can differ slightly.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any

import torch

from rayrm.config import MonitorConfig, to_dict
from rayrm.errors import UserError

REPORT = "report.json"
SUMMARY = "summary.md"


class MonitorError(UserError, RuntimeError):
    """The monitor could not judge (bad export, too few canary pairs): jobs/monitor.py exits 2, not 1."""


def log(msg: str) -> None:
    print(f"[rayrm.monitor] {msg}", flush=True)


# ---------------------------------------------------------------- scoring the canary
def score_canary(cfg: MonitorConfig) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """Read, render and score the canary -> (scorer, r_c (n,), r_r (n,), pair lengths (n,), counts)."""
    from rayrm.data import hh_to_messages, read_preferences, render_row
    from rayrm.infer import RewardScorer

    scorer = RewardScorer(cfg.model, dtype=cfg.dtype, device=cfg.device, token_budget=cfg.token_budget,
                          max_batch_rows=cfg.max_batch_rows, torch_threads=cfg.torch_threads)
    task = scorer.meta.get("task", "reward")
    if task != "reward":
        raise MonitorError(f"{cfg.model}: a {task!r} export; the canary monitor checks pairwise reward models")
    rows, rep = read_preferences(cfg.canary, cfg.split, cfg.on_bad_row)
    if cfg.max_pairs:
        rows = rows[: cfg.max_pairs]
    if len(rows) < cfg.min_pairs:
        raise MonitorError(f"{cfg.canary}: {len(rows)} valid pairs, fewer than min_pairs={cfg.min_pairs}")
    if scorer.meta.get("hh_messages"):  # rendered as training rendered them
        rows = [hh_to_messages(r, f"{cfg.canary}: row {i + 1}") for i, r in enumerate(rows)]
    texts = [render_row(r, scorer.tokenizer) for r in rows]
    n = len(texts)
    prompts = [t["prompt"] for t in texts]
    tok = scorer.tokenize(prompts + prompts, [t["chosen"] for t in texts] + [t["rejected"] for t in texts])
    rewards = torch.from_numpy(scorer.score_ids(tok.ids, tok.marks)).double()
    lengths = torch.tensor([max(len(tok.ids[i]), len(tok.ids[n + i])) for i in range(n)], dtype=torch.float64)
    counts = {"pairs": n, "skipped_rows": rep.skipped, "truncated_responses": int(sum(tok.truncated))}
    return scorer, rewards[:n], rewards[n:], lengths, counts


# ---------------------------------------------------------------- drift and thresholds
def drift_metrics(current: dict[str, float], meta: dict[str, Any]) -> dict[str, float | None]:
    """Canary numbers vs the training stats in rayrm.json; None where rayrm.json lacks the reference."""
    ref_acc = (meta.get("metrics") or {}).get("eval_accuracy")
    mean, std = meta.get("reward_mean"), meta.get("reward_std")
    usable_std = std is not None and std > 1e-12
    return {
        "accuracy_drop": None if ref_acc is None else float(ref_acc) - current["accuracy"],
        "mean_shift": (current["reward_mean"] - float(mean)) / float(std) if mean is not None and usable_std else None,
        "std_ratio": current["reward_std"] / float(std) if usable_std else None,
    }


def check_thresholds(current: dict[str, float], drift: dict[str, float | None],
                     thresholds: dict[str, float | None]) -> list[dict[str, Any]]:
    """One {name, value, threshold, ok, rule} per configured threshold; a missing reference value counts as ok
    (it cannot be judged) and says so in `rule`."""
    t = thresholds
    specs = [
        ("min_accuracy", current["accuracy"], lambda v, x: v >= x, "accuracy >= {x}"),
        ("max_accuracy_drop", drift["accuracy_drop"], lambda v, x: v <= x, "eval_accuracy - accuracy <= {x}"),
        ("max_ece", current["ece"], lambda v, x: v <= x, "ece <= {x}"),
        ("max_mean_shift", drift["mean_shift"], lambda v, x: abs(v) <= x, "abs(mean_shift) <= {x}"),
        ("max_std_ratio", drift["std_ratio"], lambda v, x: 1 / x <= v <= x, "1/{x} <= std_ratio <= {x}"),
    ]
    checks = []
    for name, value, ok, rule in specs:
        x = t.get(name)
        if x is None:
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            checks.append({"name": name, "value": None, "threshold": x, "ok": True,
                           "rule": rule.format(x=x) + " (not checked: no reference in rayrm.json)"})
            continue
        checks.append({"name": name, "value": value, "threshold": x, "ok": bool(ok(value, x)), "rule": rule.format(x=x)})
    return checks


# ---------------------------------------------------------------- the job
def run_monitor(cfg: MonitorConfig) -> dict[str, Any]:
    """Score the canary, compare with the training stats, write report.json/summary.md/PNGs; `passed` in the result."""
    from rayrm.report import build_eval_report, json_safe, write_eval_report

    t0 = time.time()
    scorer, r_c, r_r, lengths, counts = score_canary(cfg)
    meta = scorer.meta
    rep = build_eval_report(r_c, r_r, lengths, cfg.n_length_buckets, cfg.n_bins, scorer.temperature)
    n = counts["pairs"]
    current = {k: rep[k] for k in ("accuracy", "ece", "ece_raw", "margin", "reward_mean", "reward_std", "temperature")}
    current["accuracy_ci95"] = wilson_interval(current["accuracy"], n)
    drift = drift_metrics(current, meta)
    checks = check_thresholds(current, drift, to_dict(cfg.thresholds))
    alerts = [f"{c['name']}: {c['value']:.4f} breaks {c['rule']}" for c in checks if not c["ok"]]
    ref_metrics = meta.get("metrics") or {}
    report: dict[str, Any] = {
        "passed": not alerts,
        "alerts": alerts,
        "checks": checks,
        "metrics": current,
        "drift": drift,
        "reference": {"eval_accuracy": ref_metrics.get("eval_accuracy"),
                      # the held-out ECE at the same T as the canary's (training stores the calibrated one when it fits T)
                      "eval_ece": ref_metrics.get("eval_ece_calibrated", ref_metrics.get("eval_ece")),
                      "reward_mean": meta.get("reward_mean"), "reward_std": meta.get("reward_std")},
        "counts": counts,
        "model": scorer.model_dir,
        "base_model": meta.get("base_model"),
        "canary": os.path.abspath(cfg.canary) if os.path.exists(cfg.canary) else cfg.canary,
        "accuracy_by_length": rep["accuracy_by_length"],
        "reliability": rep["reliability"],
        "reward_hist": rep["reward_hist"],
        "config": to_dict(cfg),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    os.makedirs(cfg.output, exist_ok=True)
    files = write_eval_report(rep, cfg.output, title="canary", json_name=None)  # the three PNGs
    files["report"] = os.path.join(cfg.output, REPORT)
    files["summary"] = os.path.join(cfg.output, SUMMARY)
    report["files"] = files
    report["wall_s"] = time.time() - t0
    with open(files["report"], "w") as f:
        json.dump(json_safe(report), f, indent=2)
    with open(files["summary"], "w") as f:
        f.write(summary_markdown(report))
    log(("PASSED" if report["passed"] else "ALERT: " + "; ".join(alerts)) + f" ({n} pairs, report in {cfg.output})")
    return report


def wilson_interval(p: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion p over n trials: how far the canary accuracy can be from the truth
    by sampling alone (stays inside [0, 1] and is not empty at p = 0 or 1, unlike p +/- z * se)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def summary_markdown(report: dict[str, Any]) -> str:
    """The short human summary: verdict, the checks table, the drift numbers, links to the plots."""
    m, d, ref = report["metrics"], report["drift"], report["reference"]
    lines = [
        f"# Reward-model canary: {'PASSED' if report['passed'] else 'ALERT'}",
        "",
        f"- model: `{report['model']}` (base `{report['base_model']}`)",
        f"- canary: `{report['canary']}`, {report['counts']['pairs']} pairs "
        f"({report['counts']['skipped_rows']} rows skipped, {report['counts']['truncated_responses']} responses truncated)",
        f"- created: {report['created']}",
        "",
        "| check | value | rule | status |",
        "| --- | --- | --- | --- |",
    ]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['rule']} | {'ok' if c['ok'] else '**ALERT**'} |")
    lines += [
        "",
        "| metric | canary | training (rayrm.json) |",
        "| --- | --- | --- |",
        f"| pairwise accuracy | {_fmt(m['accuracy'])} (95% CI {_fmt(m['accuracy_ci95'][0])}-{_fmt(m['accuracy_ci95'][1])}) "
        f"| {_fmt(ref['eval_accuracy'])} |",
        f"| ECE (T = {m['temperature']:.3g}) | {_fmt(m['ece'])} | {_fmt(ref['eval_ece'])} |",
        f"| reward mean | {_fmt(m['reward_mean'])} | {_fmt(ref['reward_mean'])} |",
        f"| reward std | {_fmt(m['reward_std'])} | {_fmt(ref['reward_std'])} |",
        f"| standardized mean shift | {_fmt(d['mean_shift'])} | 0 |",
        f"| std ratio | {_fmt(d['std_ratio'])} | 1 |",
        "",
        "![reliability](reliability.png) ![accuracy by length](accuracy_by_length.png) ![rewards](reward_hist.png)",
        "",
    ]
    return "\n".join(lines)
