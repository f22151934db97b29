"""`rayrm eval`: a reward model (or several, A/B) on a fixed preference suite, scored like `rayrm score`.

    rayrm eval --config configs/eval/default.yaml model=/ckpt/final input=/data/suite.parquet output=/tmp/eval

1. read every row (pairs, as RewardBench v1 and TRL write them, or best-of-N rows, as RewardBench 2 writes them),
   checking each; a bad row names file, row and field (or is counted and skipped with on_bad_row=skip);
2. collect the distinct (prompt, completion) units: a completion in several rows is scored once;
3. score the units with each model through the Ray Data scoring pipeline (`rayrm.score.run_scoring`);
4. per row and model the credit (`rayrm.rewardbench`), then accuracy with Wilson intervals overall and per subset,
   RewardBench v1 sections when the subsets are v1's, and for every model after the first the paired difference to
   the first with a bootstrap interval; `results.json`, `scores.parquet`, `summary.md` under `output`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from rayrm.config import EvalConfig
from rayrm.data import BadRowError, ReadReport, validate_row
from rayrm.progress import say

NO_SUBSET = "all"


# ---------------------------------------------------------------- 1. rows
def detect_format(raw: dict[str, Any], cfg: EvalConfig) -> str:
    """pairs when `chosen` is a string or a message list ending in the answer, best_of_n when it is a list of
    completions (strings), ranked when the row has `completions` (with `ranking` or `scores`, as training reads)."""
    if raw.get("completions") is not None:
        return "ranked"
    chosen = raw.get(cfg.chosen_field)
    if isinstance(chosen, list) and chosen and all(isinstance(c, str) for c in chosen):
        return "best_of_n"
    return "pairs"


def _validate_best_of_n(raw: Any, loc: str, cfg: EvalConfig) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRowError(f"{loc}: row must be a JSON object, got {type(raw).__name__}")
    prompt = raw.get(cfg.prompt_field)
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
        raise BadRowError(f"{loc}: field '{cfg.prompt_field}' must be a string or a message list")
    out: dict[str, Any] = {"prompt": prompt}
    for side, name in (("chosen", cfg.chosen_field), ("rejected", cfg.rejected_field)):
        value = raw.get(name)
        if not isinstance(value, list) or not value:
            raise BadRowError(f"{loc}: field '{name}' must be a non-empty list of completions")
        for i, c in enumerate(value):
            if not isinstance(c, str):
                raise BadRowError(f"{loc}: field '{name}[{i}]' must be a string, got {type(c).__name__}")
        out[side] = list(value)
    return out


def read_suite(cfg: EvalConfig) -> tuple[list[dict[str, Any]], str, ReadReport]:
    """Every row of `cfg.input` -> (rows, format, report). A row: prompt, chosen (list), rejected (list), subset, id,
    where (file:row)."""
    from rayrm.data import read_rows
    from rayrm.score import list_input_files

    fmt = cfg.format
    rows: list[dict[str, Any]] = []
    report = ReadReport()

    def validate(raw: Any, loc: str) -> dict[str, Any]:
        nonlocal fmt
        if isinstance(raw, BadRowError):  # a line that is not JSON: its own message names file and line
            raise raw
        if fmt == "auto" and isinstance(raw, dict):
            fmt = detect_format(raw, cfg)
        if fmt == "best_of_n":
            row = _validate_best_of_n(raw, loc, cfg)
        elif fmt == "ranked":
            row = _validate_ranked(raw, loc)
        else:
            renamed = {k: raw.get(f) for k, f in (("prompt", cfg.prompt_field), ("chosen", cfg.chosen_field),
                                                  ("rejected", cfg.rejected_field))} if isinstance(raw, dict) else raw
            if isinstance(renamed, dict) and renamed.get("prompt") is None:
                renamed.pop("prompt")
            row = _explicit_prompt(validate_row(renamed, loc))
            row["chosen"], row["rejected"] = [row["chosen"]], [row["rejected"]]
        subset = raw.get(cfg.subset_field)
        row["subset"] = str(subset) if subset is not None else NO_SUBSET
        row["id"] = str(raw[cfg.id_field]) if raw.get(cfg.id_field) is not None else loc
        row["where"] = loc
        return row

    for path in list_input_files(cfg.input):
        got, rep = read_rows(path, validate, on_bad_row=cfg.on_bad_row)
        rows += got
        report.rows += rep.rows
        report.skipped += rep.skipped
        report.errors += rep.errors
    if cfg.max_rows:
        rows = rows[: cfg.max_rows]
    return rows, ("pairs" if fmt == "auto" else fmt), report


def _validate_ranked(raw: Any, loc: str) -> dict[str, Any]:
    """A ranked row (`prompt`, `completions`, `ranking` 1 = best or `scores` higher = better), checked as training
    checks it -> completions in input order (as `chosen`; `rejected` empty) and their levels (lower = better)."""
    if not isinstance(raw, dict) or raw.get("completions") is None:
        raise BadRowError(f"{loc}: a ranked row needs a 'completions' list")
    validate_row(raw, loc)  # names the bad field: prompt, completions[j], ranking, scores
    if raw.get("ranking") is not None:
        levels = [float(x) for x in raw["ranking"]]
    elif raw.get("scores") is not None:
        levels = [-float(x) for x in raw["scores"]]
    else:
        raise BadRowError(f"{loc}: a ranked row needs 'ranking' or 'scores'")
    if len(set(levels)) < 2:
        raise BadRowError(f"{loc}: field 'scores' ranks no completion above another")
    return {"prompt": raw["prompt"], "chosen": list(raw["completions"]), "rejected": [], "levels": levels}


def _explicit_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A pair whose prompt is implicit (conversations sharing their first turns) -> prompt + final answers (TRL)."""
    if "prompt" in row:
        return row
    from trl.data_utils import maybe_extract_prompt

    return {**row, **maybe_extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})}


# ---------------------------------------------------------------- 2. units
def units_of(rows: list[dict[str, Any]]) -> tuple[list[tuple[Any, Any]], list[list[int]], list[list[int]]]:
    """Distinct (prompt, completion) units, and per row the unit indices of its chosen and of its rejected."""
    index: dict[str, int] = {}
    units: list[tuple[Any, Any]] = []

    def unit(prompt: Any, completion: Any) -> int:
        key = json.dumps([prompt, completion], sort_keys=True)
        if key not in index:
            index[key] = len(units)
            units.append((prompt, completion))
        return index[key]

    chosen = [[unit(r["prompt"], c) for c in r["chosen"]] for r in rows]
    rejected = [[unit(r["prompt"], c) for c in r["rejected"]] for r in rows]
    return units, chosen, rejected


def write_units(units: list[tuple[Any, Any]], path: str) -> None:
    """Units as a Parquet file `rayrm score` reads: id, prompt, completion; message lists when any unit has them
    (plain text becomes a user / an assistant message, so one column has one type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = any(isinstance(p, list) or isinstance(c, list) for p, c in units)

    def msgs(x: Any, role: str) -> list[dict[str, str]]:
        return x if isinstance(x, list) else [{"role": role, "content": x}]

    prompts = [msgs(p, "user") if conv else p for p, _ in units]
    comps = [msgs(c, "assistant") if conv else c for _, c in units]
    pq.write_table(pa.table({"id": np.arange(len(units), dtype=np.int64), "prompt": prompts, "completion": comps}),
                   path)


# ---------------------------------------------------------------- 3. scoring
def score_units(cfg: EvalConfig, model: str, units_path: str, out: str, n_units: int) -> np.ndarray:
    """Rewards (n_units,) of one model, in unit order, through the scoring pipeline. `out` starts empty: unit ids
    are positions in this run's suite, so rewards left by an earlier run (another suite or model) must not resume."""
    import shutil

    import pandas as pd

    from rayrm.config import ScoreConfig
    from rayrm.score import run_scoring

    score_cfg = ScoreConfig(model=model, input=units_path, output=out, best_of_n="off", dtype=cfg.dtype,
                            num_actors=cfg.num_actors, cpus_per_actor=cfg.cpus_per_actor,
                            gpus_per_actor=cfg.gpus_per_actor, torch_threads=cfg.torch_threads,
                            token_budget=cfg.token_budget, packing=cfg.packing)
    shutil.rmtree(out, ignore_errors=True)
    run_scoring(score_cfg)
    df = pd.read_parquet(os.path.join(out, "rewards"), columns=["id", "reward"])
    rewards = np.full(n_units, np.nan)
    rewards[df["id"].to_numpy(np.int64)] = df["reward"].to_numpy(np.float64)
    if np.isnan(rewards).any():
        raise RuntimeError(f"{out}: {int(np.isnan(rewards).sum())} units have no reward")
    return rewards


# ---------------------------------------------------------------- 4. results
def credits(rewards: np.ndarray, chosen: list[list[int]], rejected: list[list[int]], fmt: str,
            levels: list[list[float]] | None = None) -> np.ndarray:
    """Per row: 1/0 for a pair (chosen strictly above rejected), the best-of-N credit for a best-of-N row, the share
    of ordered pairs kept for a ranked row (its completions are in `chosen`, their `levels` lower = better)."""
    from rayrm.rewardbench import best_of_n_credit, pair_credit, ranked_credit

    if fmt == "ranked":
        return np.asarray([ranked_credit(rewards[c], lv) for c, lv in zip(chosen, levels or [])])
    if fmt == "pairs":
        return pair_credit(rewards[[c[0] for c in chosen]], rewards[[r[0] for r in rejected]])
    return np.asarray([best_of_n_credit(rewards[c], rewards[r]) for c, r in zip(chosen, rejected)])


def accuracy_table(credit: np.ndarray, subsets: np.ndarray) -> dict[str, Any]:
    """{overall: {accuracy, n, ci95}, subsets: {name: {...}}, sections (RewardBench v1, when its subsets)}."""
    from rayrm.rewardbench import V1_EXAMPLE_COUNTS, v1_sections, wilson_interval

    def cell(x: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(x.mean()), "n": int(x.size), "ci95": list(wilson_interval(float(x.sum()), x.size))}

    subs = {s: cell(credit[subsets == s]) for s in sorted(set(subsets.tolist()))}
    out: dict[str, Any] = {"overall": cell(credit), "subsets": subs}
    if any(s in V1_EXAMPLE_COUNTS for s in subs):
        out["sections"] = v1_sections({s: v["accuracy"] for s, v in subs.items() if s in V1_EXAMPLE_COUNTS})
    return out


def ab_table(credit: np.ndarray, base: np.ndarray, subsets: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired difference (this model - the first) overall and per subset, with bootstrap 95% intervals."""
    from rayrm.rewardbench import paired_bootstrap

    def cell(sel: np.ndarray) -> dict[str, Any]:
        d, lo, hi = paired_bootstrap(credit[sel], base[sel], n_boot, seed)
        return {"difference": d, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0), "n": int(sel.sum())}

    return {"overall": cell(np.ones(len(credit), bool)),
            "subsets": {s: cell(subsets == s) for s in sorted(set(subsets.tolist()))}}


def gate(results: dict[str, Any], cfg: EvalConfig) -> list[str]:
    """Reasons the job fails its gate: a model's overall accuracy below fail_below, or a later model's accuracy more
    than max_regression below the first's."""
    reasons = []
    models = results["models"]
    for m in models:
        acc = m["overall"]["accuracy"]
        if cfg.fail_below is not None and acc < cfg.fail_below:
            reasons.append(f"{m['model']}: accuracy {acc:.4f} < fail_below {cfg.fail_below}")
    if cfg.max_regression is not None:
        for m in models[1:]:
            d = m["vs_first"]["overall"]["difference"]
            if d < -cfg.max_regression:
                reasons.append(f"{m['model']}: {d:+.4f} against {models[0]['model']} (max_regression "
                               f"{cfg.max_regression})")
    return reasons


def summary_markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page: accuracy [95% interval] per subset and model, differences to model 0."""
    models = results["models"]
    lines = [f"# rayrm eval: {results['input']}", "",
             f"{results['rows']:,} rows ({results['format']}), {results['units']:,} distinct completions scored, "
             f"{results['skipped_rows']:,} bad rows skipped.", ""]
    lines += [f"- model {i}: `{m['model']}`" for i, m in enumerate(models)]
    lines += ["", "| subset | n | " + " | ".join(f"model {i}" for i in range(len(models))) + " |",
              "| --- | --- |" + " --- |" * len(models)]
    for s in ["overall", *models[0]["subsets"]]:
        cells = [m["overall"] if s == "overall" else m["subsets"][s] for m in models]
        row = [f"{c['accuracy']:.4f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]" for c in cells]
        for i, m in enumerate(models[1:], 1):
            ab = m["vs_first"]["overall"] if s == "overall" else m["vs_first"]["subsets"][s]
            row[i] += f" ({ab['difference']:+.4f}{'*' if ab['significant'] else ''})"
        lines.append(f"| {s} | {cells[0]['n']} | " + " | ".join(row) + " |")
    if "sections" in models[0]:
        lines += [""] + [f"RewardBench v1 sections, model {i}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                            m["sections"].items())
                         for i, m in enumerate(models)]
    if len(models) > 1:
        lines += ["", "(in brackets: difference to model 0; * where its paired bootstrap 95% interval excludes 0)"]
    if results["gate_failures"]:
        lines += ["", "**Gate failed:** " + "; ".join(results["gate_failures"])]
    return "\n".join(lines) + "\n"


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """The eval job: returns results.json's content (with `gate_failures`), also written under `cfg.output`."""
    import pandas as pd

    rows, fmt, report = read_suite(cfg)
    units, chosen, rejected = units_of(rows)
    os.makedirs(cfg.output, exist_ok=True)
    units_path = os.path.join(cfg.output, "units.parquet")
    write_units(units, units_path)
    say(f"eval: {len(rows):,} rows ({fmt}), {len(units):,} distinct completions, {report.skipped:,} bad rows skipped; "
        f"{len(cfg.model)} model(s)")
    subsets = np.asarray([r["subset"] for r in rows])
    table = pd.DataFrame({"id": [r["id"] for r in rows], "where": [r["where"] for r in rows], "subset": subsets})
    levels = [r.get("levels", []) for r in rows]  # ranked rows: completion ranks, lower = better
    models: list[dict[str, Any]] = []
    base = None
    for i, model in enumerate(cfg.model):
        rewards = score_units(cfg, model, units_path, os.path.join(cfg.output, "scored", str(i)), len(units))
        credit = credits(rewards, chosen, rejected, fmt, levels)
        entry = {"model": model, **accuracy_table(credit, subsets)}
        if base is None:
            base = credit
        else:
            entry["vs_first"] = ab_table(credit, base, subsets, cfg.bootstrap, cfg.seed)
        models.append(entry)
        table[f"credit_{i}"] = credit
        if fmt == "ranked":  # rewards in the row's completion order
            table[f"completion_rewards_{i}"] = [rewards[c].tolist() for c in chosen]
        else:
            table[f"chosen_rewards_{i}"] = [rewards[c].tolist() for c in chosen]
            table[f"rejected_rewards_{i}"] = [rewards[r].tolist() for r in rejected]
    results: dict[str, Any] = {"input": cfg.input, "format": fmt, "rows": len(rows), "units": len(units),
                               "skipped_rows": report.skipped, "models": models}
    results["gate_failures"] = gate(results, cfg)
    table.to_parquet(os.path.join(cfg.output, "scores.parquet"), index=False)
    with open(os.path.join(cfg.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(cfg.output, "summary.md"), "w") as f:
        f.write(summary_markdown(results))
    return results
