"""`rayrm eval`: a reward model (or several, A/B) on a fixed preference suite, scored like `rayrm score`.

    rayrm eval --config configs/eval/default.yaml model=/ckpt/final input=/data/suite.parquet output=/tmp/eval

1. read every row (pairs, as RewardBench v1 and TRL write them, or best-of-N rows, as RewardBench 2 writes them),
   checking each; a bad row names file, row and field (or is counted and skipped with on_bad_row=skip);
2. collect the distinct (prompt, completion) units: a completion in several rows is scored once;
3. score the units with each model through the Ray Data scoring pipeline (`rayrm.score.run_scoring`);
4. per row and model the credit (`rayrm.rewardbench`), then accuracy with Wilson intervals overall and per subset,
   RewardBench v1 or 2 sections when the subsets are the benchmark's (v2's Ties subset by its own rule), the
   pair-level ECE and reliability table, accuracy by length, and for every model after the first the paired difference
   to the first with a bootstrap interval; `results.json`, `scores.parquet`, `summary.md` and PNG plots under
   `output`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from rayrm.config import EvalConfig
from rayrm.data import BadRowError, ReadReport, validate_row
from rayrm.progress import say
from rayrm.rewardbench import TIES  # the Ties subset (any case), scored by its own rule (TiesTable)

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
    ties_seen: set[tuple[str, str]] = set()

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
        if fmt == "best_of_n" and row["subset"].lower() == TIES:
            row["ties"] = _ties_key(row, loc, cfg, ties_seen)
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


def _ties_key(row: dict[str, Any], loc: str, cfg: EvalConfig, seen: set[tuple[str, str]]) -> tuple[str, str]:
    """A RewardBench 2 Ties row: its id names its kind and prompt (`ref:<p>`, `tied:<p>`, each once); a tied row
    has at least two correct answers (its `chosen`)."""
    from rayrm.rewardbench import ties_id

    try:
        key = ties_id(row["id"])
    except ValueError as e:
        raise BadRowError(f"{loc}: field '{cfg.id_field}': {e}") from None
    if key in seen:
        raise BadRowError(f"{loc}: field '{cfg.id_field}': a second Ties row '{row['id']}'")
    if key[0] == "tied" and len(row["chosen"]) < 2:
        raise BadRowError(f"{loc}: field '{cfg.chosen_field}': a 'tied' Ties row needs two or more correct answers")
    seen.add(key)
    return key


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
def eval_block_rows(n_units: int, num_actors: int) -> int:
    """Rows per Ray Data block for a suite: about four blocks per actor, so every actor has work (scoring's 2048 would
    hand a small suite to one actor), between 128 (length sorting happens inside a block) and 2048."""
    return int(min(2048, max(128, -(-n_units // (4 * num_actors)))))


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
                            token_budget=cfg.token_budget, packing=cfg.packing,
                            block_rows=eval_block_rows(n_units, cfg.num_actors))
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


def ties_table(rewards: np.ndarray, rows: list[dict[str, Any]], chosen: list[list[int]],
               rejected: list[list[int]]) -> tuple[Any, np.ndarray] | None:
    """RewardBench 2's Ties rows of one model -> (TiesTable, their row indices), or None without Ties rows."""
    from rayrm.rewardbench import TiesTable

    idx = np.asarray([j for j, r in enumerate(rows) if "ties" in r], np.int64)
    if idx.size == 0:
        return None
    table = TiesTable([rows[j]["ties"][0] for j in idx], [rows[j]["ties"][1] for j in idx],
                      [rewards[chosen[j]] for j in idx], [rewards[rejected[j]] for j in idx])
    return table, idx


def accuracy_table(credit: np.ndarray, subsets: np.ndarray, ties: Any = None, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """{overall: {accuracy, n, ci95}, subsets: {name: {...}}, sections (RewardBench v1 or 2, when its subsets)}.
    A Ties subset's accuracy is RewardBench 2's Ties score, its interval a bootstrap over prompts; its rows' credit
    (in overall) is whether every correct answer outscores every incorrect one."""
    from rayrm.rewardbench import V1_EXAMPLE_COUNTS, V2_SUBSETS, bootstrap_ties, v1_sections, v2_sections, \
        wilson_interval

    def cell(x: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(x.mean()), "n": int(x.size), "ci95": list(wilson_interval(float(x.sum()), x.size))}

    subs = {s: cell(credit[subsets == s]) for s in sorted(set(subsets.tolist()))}
    if ties is not None:
        score, lo, hi = bootstrap_ties(ties, n_boot=n_boot, seed=seed)
        for s in subs:
            if s.lower() == TIES:
                subs[s] = {"accuracy": score, "n": subs[s]["n"], "ci95": [lo, hi], "rule": "RewardBench 2 Ties",
                           "components": ties.components()}
    out: dict[str, Any] = {"overall": cell(credit), "subsets": subs}
    v2 = {x.lower() for x in V2_SUBSETS}
    if any(s.lower() in v2 for s in subs):
        out["sections"] = v2_sections({s: v["accuracy"] for s, v in subs.items()})
        out["benchmark"] = "RewardBench 2"
    elif any(s in V1_EXAMPLE_COUNTS for s in subs):
        out["sections"] = v1_sections({s: v["accuracy"] for s, v in subs.items() if s in V1_EXAMPLE_COUNTS})
        out["benchmark"] = "RewardBench v1"
    return out


def ab_table(credit: np.ndarray, base: np.ndarray, subsets: np.ndarray, n_boot: int, seed: int,
             ties: Any = None, base_ties: Any = None) -> dict[str, Any]:
    """Paired difference (this model - the first) overall and per subset, with bootstrap 95% intervals (rows
    resampled; for a Ties subset, prompts resampled and its score recomputed)."""
    from rayrm.rewardbench import bootstrap_ties, paired_bootstrap

    def cell(sel: np.ndarray, name: str = "") -> dict[str, Any]:
        if ties is not None and name.lower() == TIES:
            d, lo, hi = bootstrap_ties(ties, base_ties, n_boot, seed)
        else:
            d, lo, hi = paired_bootstrap(credit[sel], base[sel], n_boot, seed)
        return {"difference": d, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0), "n": int(sel.sum())}

    return {"overall": cell(np.ones(len(credit), bool)),
            "subsets": {s: cell(subsets == s, s) for s in sorted(set(subsets.tolist()))}}


def ordered_pairs(rewards: np.ndarray, chosen: list[list[int]], rejected: list[list[int]], fmt: str,
                  levels: list[list[float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every preference the suite states, as (reward of the preferred, reward of the other) arrays: a pair; each
    chosen against each rejected of a best-of-N row; each ordered pair of a ranked row."""
    better: list[int] = []
    worse: list[int] = []
    for j, (c, r) in enumerate(zip(chosen, rejected)):
        if fmt == "ranked":
            lv = (levels or [])[j]
            for a in range(len(c)):
                for b in range(len(c)):
                    if lv[a] < lv[b]:
                        better.append(c[a])
                        worse.append(c[b])
        else:
            for a in c:
                for b in r:
                    better.append(a)
                    worse.append(b)
    return rewards[np.asarray(better, np.int64)], rewards[np.asarray(worse, np.int64)]


def calibration(r_better: np.ndarray, r_worse: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Pair-level ECE and reliability table of the Bradley-Terry probability sigmoid(r_better - r_worse), each pair in
    both orders (rayrm.metrics.pair_ece, as the training job's held-out report)."""
    import torch

    from rayrm.metrics import pair_ece, pair_reliability

    a, b = torch.as_tensor(r_better, dtype=torch.float64), torch.as_tensor(r_worse, dtype=torch.float64)
    return {"ece": pair_ece(a, b, n_bins), "pairs": int(a.numel()), "reliability": pair_reliability(a, b, n_bins)}


def _chars(x: Any) -> int:
    return len(x) if isinstance(x, str) else sum(len(str(m.get("content", ""))) for m in x if isinstance(m, dict))


def row_lengths(rows: list[dict[str, Any]]) -> np.ndarray:
    """Per row, characters of the prompt plus its longest completion (the length a reader of the suite sees)."""
    return np.asarray([_chars(r["prompt"]) + max(_chars(c) for c in r["chosen"] + r["rejected"]) for r in rows],
                      np.float64)


def accuracy_by_length(credit: np.ndarray, lengths: np.ndarray, edges: list[float]) -> list[dict[str, Any]]:
    """Mean row credit per length bucket (edges from rayrm.metrics.length_bucket_edges, buckets as
    rayrm.metrics.bucket_index cuts them), with Wilson intervals."""
    import torch

    from rayrm.metrics import bucket_index
    from rayrm.rewardbench import wilson_interval

    idx = bucket_index(torch.as_tensor(lengths), edges).numpy()
    out = []
    for b in range(max(1, len(edges) - 1)):
        x = credit[idx == b]
        out.append({"lo": edges[b], "hi": edges[min(b + 1, len(edges) - 1)], "count": int(x.size),
                    "accuracy": float(x.mean()) if x.size else float("nan"),
                    "ci95": list(wilson_interval(float(x.sum()), x.size))})
    return out


def write_plots(results: dict[str, Any], out: str) -> dict[str, str]:
    """accuracy_by_subset.png (every model, 95% intervals), reliability_<i>.png and accuracy_by_length_<i>.png."""
    from rayrm.report import plot_accuracy_by_length, plot_reliability, plot_subset_accuracy

    files = {"accuracy_by_subset": plot_subset_accuracy(
        [(f"model {i}", m) for i, m in enumerate(results["models"])], os.path.join(out, "accuracy_by_subset.png"),
        chance=None if results.get("format") == "best_of_n" else 0.5)}  # best-of-N: chance is 1/N, per row
    for i, m in enumerate(results["models"]):
        files[f"reliability_{i}"] = plot_reliability(
            m["calibration"]["reliability"], os.path.join(out, f"reliability_{i}.png"),
            f"model {i}: pair reliability (ECE {m['calibration']['ece']:.3f})")
        files[f"accuracy_by_length_{i}"] = plot_accuracy_by_length(
            m["by_length"], os.path.join(out, f"accuracy_by_length_{i}.png"),
            f"model {i}: accuracy {m['overall']['accuracy']:.3f} by length",
            xlabel="characters (prompt + longest completion)", ylabel="accuracy (row credit)")
    return {k: os.path.basename(v) for k, v in files.items()}


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
        lines += [""] + [f"{m['benchmark']} sections, model {i}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                             m["sections"].items())
                         for i, m in enumerate(models)]
    for s, c in models[0]["subsets"].items():
        if "components" in c:
            lines += ["", f"{s}: RewardBench 2's Ties score (30% ref accuracy, 30% tied accuracy, 20% + 20% correct "
                          "answers closer to each other than to incorrect ones, 1% margin); row credit in overall: "
                          "every correct answer above every incorrect one."]
    lines += [""] + [f"model {i}: pair ECE {m['calibration']['ece']:.4f} over {m['calibration']['pairs']:,} "
                     "preferences (sigmoid of the reward difference)" for i, m in enumerate(models)]
    if len(models) > 1:
        lines += ["", "(in brackets: difference to model 0; * where its paired bootstrap 95% interval excludes 0)"]
    if results["gate_failures"]:
        lines += ["", "**Gate failed:** " + "; ".join(results["gate_failures"])]
    return "\n".join(lines) + "\n"


def _length_edges(lengths: np.ndarray, n_buckets: int = 4) -> list[float]:
    import torch

    from rayrm.metrics import length_bucket_edges

    return length_bucket_edges(torch.as_tensor(lengths), n_buckets) if lengths.size else [0.0]


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """The eval job: returns results.json's content (with `gate_failures`), also written under `cfg.output`."""
    import pandas as pd

    from rayrm.report import json_safe

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
    lengths = row_lengths(rows)
    edges = _length_edges(lengths)
    models: list[dict[str, Any]] = []
    base = base_ties = None
    for i, model in enumerate(cfg.model):
        rewards = score_units(cfg, model, units_path, os.path.join(cfg.output, "scored", str(i)), len(units))
        credit = credits(rewards, chosen, rejected, fmt, levels)
        ties = ties_table(rewards, rows, chosen, rejected)
        if ties is not None:
            credit[ties[1]] = ties[0].row_accurate
        tt = ties[0] if ties is not None else None
        entry = {"model": model, **accuracy_table(credit, subsets, tt, cfg.bootstrap, cfg.seed)}
        entry["calibration"] = calibration(*ordered_pairs(rewards, chosen, rejected, fmt, levels))
        entry["by_length"] = accuracy_by_length(credit, lengths, edges)
        if base is None:
            base, base_ties = credit, tt
        else:
            entry["vs_first"] = ab_table(credit, base, subsets, cfg.bootstrap, cfg.seed, tt, base_ties)
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
    results["plots"] = write_plots(results, cfg.output)
    results = json_safe(results)
    table.to_parquet(os.path.join(cfg.output, "scores.parquet"), index=False)
    with open(os.path.join(cfg.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(cfg.output, "summary.md"), "w") as f:
        f.write(summary_markdown(results))
    return results
