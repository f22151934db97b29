"""Evaluation reports: accuracy by length bucket, reliability diagram, chosen/rejected reward histograms (PNG + JSON).

`eval_report(r_chosen, r_rejected, lengths, out_dir)` is what the training job calls at its end on the held-out
split and what the canary monitor (rayrm/monitor.py) reuses. The numbers come from rayrm.metrics (pure torch); this
module only arranges them and draws them. Plots use matplotlib's object API (`Figure`, no pyplot), so nothing global
is touched and no display is needed.

Files written to `out_dir`:
    eval_report.json        every number below (NaN -> null)
    reliability.png         mean predicted P(chosen wins) vs observed frequency per bin, with bin counts
    accuracy_by_length.png  pairwise accuracy per length bucket (quantiles of the per-pair lengths), with counts
    reward_hist.png         histograms of chosen and rejected rewards on shared bins
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rayrm.metrics import (
    accuracy_by_bucket,
    length_bucket_edges,
    mean_margin,
    pair_ece,
    pair_reliability,
    pairwise_accuracy,
    reward_stats,
)

REPORT_JSON = "eval_report.json"
RELIABILITY_PNG = "reliability.png"
LENGTH_PNG = "accuracy_by_length.png"
HIST_PNG = "reward_hist.png"


# ---------------------------------------------------------------- numbers
def reward_histograms(r_chosen: torch.Tensor, r_rejected: torch.Tensor, bins: int = 30) -> dict[str, list[float]]:
    """Counts of chosen and rejected rewards (b,) on one set of `bins` equal-width bins spanning both."""
    both = torch.cat([r_chosen, r_rejected]).double().numpy()
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else np.linspace(0.0, 1.0, bins + 1)
    return {
        "edges": edges.tolist(),
        "chosen": np.histogram(r_chosen.double().numpy(), edges)[0].tolist(),
        "rejected": np.histogram(r_rejected.double().numpy(), edges)[0].tolist(),
    }


def build_eval_report(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    n_length_buckets: int = 4,
    n_bins: int = 10,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """All report numbers for pairs with rewards r_c, r_r (n,) and per-pair lengths (n,); no I/O.

    Probabilities are sigmoid((r_c - r_r) / temperature): pass the fitted T (rayrm.metrics.fit_temperature) to
    report calibrated ones; `ece_raw` is always at T = 1.
    """
    r_c, r_r = r_chosen.detach().double().cpu(), r_rejected.detach().double().cpu()
    lengths_t = torch.as_tensor(lengths, dtype=torch.float64)
    if not (r_c.shape == r_r.shape == lengths_t.shape and r_c.dim() == 1):
        raise ValueError(f"r_chosen, r_rejected and lengths must all be (n,), got {r_c.shape}, {r_r.shape}, {lengths_t.shape}")
    n = r_c.numel()
    stats = reward_stats(torch.cat([r_c, r_r])) if n else {"mean": math.nan, "std": math.nan}
    edges = length_bucket_edges(lengths_t, n_length_buckets) if n else [0.0]
    return {
        "num_pairs": n,
        "accuracy": pairwise_accuracy(r_c, r_r) if n else math.nan,
        "margin": mean_margin(r_c, r_r) if n else math.nan,
        "temperature": float(temperature),
        "ece": pair_ece(r_c / temperature, r_r / temperature, n_bins) if n else math.nan,
        "ece_raw": pair_ece(r_c, r_r, n_bins) if n else math.nan,
        "reward_mean": stats["mean"],
        "reward_std": stats["std"],
        "chosen_mean": float(r_c.mean()) if n else math.nan,
        "rejected_mean": float(r_r.mean()) if n else math.nan,
        "accuracy_by_length": accuracy_by_bucket(r_c, r_r, lengths_t, edges) if n else [],
        "reliability": pair_reliability(r_c, r_r, n_bins, temperature) if n else [],
        "reward_hist": reward_histograms(r_c, r_r),
    }


def json_safe(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------- plots
def _figure(width: float = 5.5, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def plot_reliability(table: list[dict[str, float]], path: str, title: str = "reliability") -> str:
    """Reliability diagram: observed frequency vs mean confidence per non-empty bin; the diagonal is calibrated."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="calibrated")
    full = [b for b in table if b["count"]]
    if full:
        centers = [(b["lo"] + b["hi"]) / 2 for b in full]
        ax.bar(centers, [b["frequency"] for b in full], width=[b["hi"] - b["lo"] for b in full], alpha=0.35,
               edgecolor="k", label="observed frequency")
        ax.plot([b["confidence"] for b in full], [b["frequency"] for b in full], "o-", c="C3", label="by confidence")
        for c, b in zip(centers, full):
            ax.annotate(str(b["count"]), (c, 0.02), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(first preferred)", ylabel="observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_accuracy_by_length(buckets: list[dict[str, float]], path: str, title: str = "accuracy by length",
                            xlabel: str = "tokens (prompt + longer response)",
                            ylabel: str = "pairwise accuracy") -> str:
    """Bar per length bucket (label lo-hi, count above), chance level dashed."""
    fig, ax = _figure()
    labels = [f"{b['lo']:.0f}-{b['hi']:.0f}" for b in buckets]
    acc = [0.0 if b["count"] == 0 else b["accuracy"] for b in buckets]
    ax.bar(range(len(buckets)), acc, color="C0", edgecolor="k")
    for i, b in enumerate(buckets):
        ax.annotate(f"n={b['count']}", (i, min(acc[i] + 0.02, 0.95)), ha="center", fontsize=8)
    ax.axhline(0.5, ls="--", c="grey", lw=1)
    ax.set_xticks(range(len(buckets)), labels, fontsize=8)
    ax.set(ylim=(0, 1), xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_subset_accuracy(models: list[tuple[str, dict[str, Any]]], path: str,
                         title: str = "accuracy per subset", chance: float | None = 0.5) -> str:
    """Accuracy per subset (and overall) of each model, side by side, with their 95% intervals as error bars and
    the chance level dashed (None: none drawn).
    `models`: [(label, {"overall": cell, "subsets": {name: cell}})], a cell {accuracy, ci95: [lo, hi], n}."""
    names = ["overall", *models[0][1]["subsets"]]
    fig, ax = _figure(max(5.5, 1.0 + 0.9 * len(names) * max(1, len(models)) / 2), 4.0)
    width = 0.8 / len(models)
    for k, (label, m) in enumerate(models):
        cells = [m["overall"] if s == "overall" else m["subsets"][s] for s in names]
        acc = np.asarray([c["accuracy"] for c in cells])
        err = np.asarray([[a - c["ci95"][0] for a, c in zip(acc, cells)], [c["ci95"][1] - a for a, c in zip(acc, cells)]])
        x = np.arange(len(names)) + (k - (len(models) - 1) / 2) * width
        ax.bar(x, acc, width=width, yerr=np.clip(err, 0, None), capsize=3, color=f"C{k}", edgecolor="k", label=label)
    if chance is not None:
        ax.axhline(chance, ls="--", c="grey", lw=1)
    first = models[0][1]
    counts = [first["overall"]["n"] if s == "overall" else first["subsets"][s]["n"] for s in names]
    ax.set_xticks(range(len(names)), [f"{s}\n(n={n})" for s, n in zip(names, counts)], fontsize=7)
    ax.set(ylim=(0, 1), ylabel="accuracy (95% interval)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_reward_histograms(hist: dict[str, list[float]], path: str, title: str = "rewards") -> str:
    """Chosen and rejected reward histograms on shared bins (from `reward_histograms`)."""
    fig, ax = _figure()
    edges = np.asarray(hist["edges"])
    widths = np.diff(edges)
    for key, color in (("chosen", "C2"), ("rejected", "C3")):
        ax.bar(edges[:-1], hist[key], width=widths, align="edge", alpha=0.5, color=color, edgecolor=color, label=key)
    ax.set(xlabel="reward", ylabel="pairs", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- the report
def write_eval_report(report: dict[str, Any], out_dir: str, title: str = "held-out",
                      json_name: str | None = REPORT_JSON) -> dict[str, str]:
    """Draw the three plots of a `build_eval_report` result and write it as JSON (unless `json_name` is None, for
    a caller writing its own); returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "reliability": plot_reliability(report["reliability"], os.path.join(out_dir, RELIABILITY_PNG),
                                        f"{title}: reliability (ECE {report['ece']:.3f}, T={report['temperature']:.3g})"),
        "accuracy_by_length": plot_accuracy_by_length(report["accuracy_by_length"], os.path.join(out_dir, LENGTH_PNG),
                                                      f"{title}: accuracy {report['accuracy']:.3f} by length"),
        "reward_hist": plot_reward_histograms(report["reward_hist"], os.path.join(out_dir, HIST_PNG),
                                              f"{title}: rewards ({report['num_pairs']} pairs)"),
    }
    if json_name:
        files["json"] = os.path.join(out_dir, json_name)
        with open(files["json"], "w") as f:
            json.dump(json_safe({**report, "files": {k: os.path.basename(v) for k, v in files.items()}}), f, indent=2)
    return files


def eval_report(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    out_dir: str,
    n_length_buckets: int = 4,
    n_bins: int = 10,
    temperature: float = 1.0,
    title: str = "held-out",
) -> dict[str, Any]:
    """The end-of-training report: numbers for r_c, r_r (n,) and per-pair lengths (n,), plots and JSON in out_dir.

    Returns the report dict with `files` ({reliability, accuracy_by_length, reward_hist, json} -> path).
    """
    report = build_eval_report(r_chosen, r_rejected, lengths, n_length_buckets, n_bins, temperature)
    report["files"] = write_eval_report(report, out_dir, title)
    return report
