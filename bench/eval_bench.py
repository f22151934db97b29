"""Suite evaluation benchmark: `rayrm eval` against the plain loop RewardBench's harness runs, in one process run.

    python bench/eval_bench.py --models /tmp/rayrm-default/final,/tmp/rayrm-minilm-hh/final
    python bench/eval_bench.py --models A,B --pairs 400 --bon 150 --set num_actors=1 --set torch_threads=2

Builds two held-out suites from ../shared/data (written to a temp dir, kept for inspection):
- pairs (RewardBench v1's row shape): the last --pairs HH pairs (past the first 1,600 the shipped MiniLM recipe trains
  on), in two subsets: chosen-longer (the preferred reply is the longer one) and chosen-not-longer (a length probe);
- best-of-4 rows (RewardBench 2's shape), three subsets of --bon rows each:
  Focus  an HH prompt, its chosen reply against its own rejected reply and two replies written for other prompts;
  Math   a GSM8K question, its reference solution against three solutions with one step corrupted (one calculator
         result changed, the final answer too: the method of ../shared/data/README.md);
  Ties   RewardBench 2's Ties layout from GSM8K: per question a `ref:<q>` row (the reference solution against three
         corrupted ones) and a `tied:<q>` row (two equally correct solutions, the reference and the same text without
         its `<<...>>` calculator notes, against the same three).
Every model is evaluated on each suite twice, the two sides alternating which goes first:
- rayrm: `rayrm.eval.run_eval` (Ray Data scoring pipeline, each distinct completion once, token-budget batches) on a
  local Ray cluster started before the clock (as a `ray job submit` finds one), with the A/B of all models in one job;
- baseline: what RewardBench's `scripts/run_rm.py` / `run_v2.py` do: every text of every row (chosen and rejected,
  no deduplication) through `AutoModelForSequenceClassification` in input order in batches of --batch-size (64, its
  default), padded to the longest in the batch, in the dtype rayrm's `auto` picks on this machine, torch's default
  threads (every core); the same token ids as rayrm (the export's rendering and truncation), so the two must agree.
It prints per suite and model the accuracy of each subset from both sides (they must match), the wall time of each
side, rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")


def _gsm8k_corrupt():
    spec = importlib.util.spec_from_file_location("make_gsm8k_rm_data", os.path.join(ROOT, "scripts",
                                                                                       "make_gsm8k_rm_data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.corrupt


def build_suites(work: str, n_pairs: int, n_bon: int, seed: int = 0) -> tuple[str, str]:
    """Write pairs.jsonl and best_of_4.jsonl (see the module docstring); returns their paths."""
    hh = [json.loads(x) for x in open(os.path.join(DATA, "hh_helpful_online_rs_pairs.jsonl"))]
    held = hh[-n_pairs:]
    pairs = [{"id": f"hh-{len(hh) - n_pairs + i}", "prompt": r["prompt"], "chosen": r["chosen"],
              "rejected": r["rejected"], "subset": "chosen-longer" if len(r["chosen"]) > len(r["rejected"])
              else "chosen-not-longer"} for i, r in enumerate(held)]
    rng = random.Random(seed)
    bon = []
    focus = hh[-n_bon:]
    for i, r in enumerate(focus):
        others = rng.sample([x for j, x in enumerate(focus) if j != i], 2)
        bon.append({"id": f"focus-{i}", "prompt": r["prompt"], "chosen": [r["chosen"]],
                    "rejected": [r["rejected"], others[0]["chosen"], others[1]["chosen"]], "subset": "Focus"})
    corrupt = _gsm8k_corrupt()
    gsm = [json.loads(x) for x in open(os.path.join(DATA, "gsm8k_train.jsonl"))][-(2 * n_bon):]
    made = {"Math": 0, "Ties": 0}
    for q, row in enumerate(gsm):
        lines = [x for x in row["answer"].strip().split("\n") if x.strip()]
        wrong = []
        for _ in range(12):
            got = corrupt(lines, rng)
            if got is not None and "\n".join(got[0]) not in wrong:
                wrong.append("\n".join(got[0]))
            if len(wrong) == 3:
                break
        if len(wrong) < 3:
            continue
        prompt = f"Question: {row['question'].strip()}\nAnswer:"
        right = " " + "\n".join(lines)
        wrong = [" " + w for w in wrong]
        if made["Math"] < n_bon and q % 2 == 0:
            bon.append({"id": f"math-{q}", "prompt": prompt, "chosen": [right], "rejected": wrong, "subset": "Math"})
            made["Math"] += 1
        elif made["Ties"] < n_bon // 2 and q % 2 == 1:
            plain = re.sub(r"<<[^<>]*>>", "", right)
            if plain == right:
                continue
            bon.append({"id": f"ref:{q}", "prompt": prompt, "chosen": [right], "rejected": wrong, "subset": "Ties"})
            bon.append({"id": f"tied:{q}", "prompt": prompt, "chosen": [right, plain], "rejected": wrong,
                        "subset": "Ties"})
            made["Ties"] += 1
    paths = []
    for name, rows in (("pairs.jsonl", pairs), ("best_of_4.jsonl", bon)):
        paths.append(os.path.join(work, name))
        with open(paths[-1], "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return paths[0], paths[1]


def plain_loop(model_dir: str, rows: list[dict], batch_size: int, dtype: str) -> tuple[list, list, float, int]:
    """RewardBench's loop: every text of every row, in order, fixed-size batches. -> (chosen rewards per row,
    rejected rewards per row, seconds, texts); the clock covers model load, tokenisation and forwards."""
    from transformers import AutoModelForSequenceClassification

    from rayrm.batching import pad_batch
    from rayrm.infer import RewardScorer

    t = time.perf_counter()
    tok = RewardScorer(model_dir)  # the export's rendering and truncation; its model is not used
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch_dtype).eval()
    texts = [(j, side, r["prompt"], c) for j, r in enumerate(rows) for side in ("chosen", "rejected")
             for c in ([r[side]] if isinstance(r[side], str) else r[side])]
    rewards: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i: i + batch_size]
            ids = tok.tokenize([x[2] for x in chunk], [x[3] for x in chunk]).ids
            input_ids, mask = pad_batch(ids, tok.tokenizer.pad_token_id, "right")
            rewards += model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
    chosen: list[list[float]] = [[] for _ in rows]
    rejected: list[list[float]] = [[] for _ in rows]
    for (j, side, _, _), r in zip(texts, rewards):
        (chosen if side == "chosen" else rejected)[j].append(r)
    return chosen, rejected, time.perf_counter() - t, len(texts)


def baseline_accuracy(rows: list[dict], chosen: list, rejected: list) -> dict[str, float]:
    """Per-subset accuracy from the loop's rewards by RewardBench's rules (pairs strict, best-of-N 1/k ties, Ties)."""
    from rayrm.rewardbench import TiesTable, best_of_n_credit

    credit: dict[str, list[float]] = {}
    ties = []
    for r, c, x in zip(rows, chosen, rejected):
        if r["subset"] == "Ties":
            ties.append((*r["id"].split(":"), c, x))
            continue
        credit.setdefault(r["subset"], []).append(float(c[0] > x[0]) if isinstance(r["chosen"], str)
                                                  else best_of_n_credit(c, x))
    out = {s: float(np.mean(v)) for s, v in credit.items()}
    if ties:
        kinds, prompts, c, x = zip(*ties)
        out["Ties"] = TiesTable(kinds, prompts, c, x).score()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma-separated export dirs (the first is the A/B baseline)")
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--bon", type=int, default=150, help="best-of-4 rows per subset (Ties: half as many prompts)")
    p.add_argument("--batch-size", type=int, default=64, help="the plain loop's batch (RewardBench's default)")
    p.add_argument("--reps", type=int, default=2, help="timed rounds; the sides alternate which runs first")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--set", action="append", default=["num_actors=2", "cpus_per_actor=0.5", "torch_threads=1"],
                   help="eval config overrides (key=value), repeatable")
    args = p.parse_args()

    import ray

    from rayrm.config import EvalConfig, load_config
    from rayrm.eval import read_suite
    from rayrm.hardware import inference_dtype

    models = args.models.split(",")
    work = tempfile.mkdtemp(prefix="rayrm-eval-bench-")
    suites = build_suites(work, args.pairs, args.bon)
    dtype = inference_dtype("auto", "cpu")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    from rayrm.eval import run_eval

    report = {"models": models, "dtype": dtype, "batch_size": args.batch_size, "overrides": args.set, "suites": {}}
    for path in suites:
        name = os.path.basename(path).split(".")[0]
        rows = [json.loads(x) for x in open(path)]
        cfg = load_config(os.path.join(ROOT, "configs/eval/default.yaml"),
                          [f"model=[{','.join(models)}]", f"input={path}", f"output={work}/out-{name}", *args.set],
                          EvalConfig)
        n_units = len({json.dumps([r["prompt"], c]) for r in read_suite(cfg)[0] for c in r["chosen"] + r["rejected"]})
        ours_s, base_s, texts = [], [], 0
        ours = base = None
        for rep in range(args.reps):
            for side in (("rayrm", "loop") if rep % 2 == 0 else ("loop", "rayrm")):
                if side == "rayrm":
                    t = time.perf_counter()
                    res = run_eval(cfg)
                    ours_s.append(time.perf_counter() - t)
                    ours = [{s: v["accuracy"] for s, v in m["subsets"].items()} for m in res["models"]]
                else:
                    total, base = 0.0, []
                    for m in models:
                        c, x, secs, texts = plain_loop(m, rows, args.batch_size, dtype)
                        total += secs
                        base.append(baseline_accuracy(rows, c, x))
                    base_s.append(total)
        agree = max(abs(ours[i][s] - base[i][s]) for i in range(len(models)) for s in base[i])
        o, b = float(np.mean(ours_s)), float(np.mean(base_s))
        report["suites"][name] = {
            "rows": len(rows), "texts_per_model_loop": texts, "distinct_completions": n_units,
            "rayrm_s": [round(x, 1) for x in ours_s], "loop_s": [round(x, 1) for x in base_s],
            "rayrm_rows_per_s": round(len(rows) * len(models) / o, 1),
            "loop_rows_per_s": round(len(rows) * len(models) / b, 1), "speedup": round(b / o, 2),
            "accuracy_rayrm": ours, "accuracy_loop": base, "max_accuracy_difference": agree,
        }
        print(f"RESULT {name}: rayrm eval {o:.1f} s vs plain loop {b:.1f} s for {len(models)} model(s) x "
              f"{len(rows)} rows: {b / o:.2f}x; largest accuracy difference {agree:.2g}", flush=True)
    ray.shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
