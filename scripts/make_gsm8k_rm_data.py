"""Build outcome-RM and process-RM training sets from GSM8K by corrupting one step of each solution.

    python scripts/make_gsm8k_rm_data.py --out /tmp/rayrm-gsm8k [--limit 2000] [--eval-fraction 0.1] [--seed 0]

Reads ../shared/data/gsm8k_train.jsonl ({"question", "answer"}; reasoning lines ending in "#### <number>"). For each
problem it writes one correct and one corrupted solution (the method of ../shared/data/README.md):
- a step is one line of the answer; the final "#### N" line is the last step;
- corruption: pick (seeded) one reasoning line that holds a calculator result `<<expr=v>>v` (or, failing that, any
  number) and change that result to another value; the final answer changes too, so it no longer matches;
- PRM labels: lines before the corrupted one +1 (untouched and right), the corrupted line -1, every later line -1
  (it builds on the wrong value), and all +1 for the correct solution;
- ORM rows carry `correct` 1 / 0 for the whole solution.
Outputs `orm.jsonl` and `prm.jsonl` (rows {prompt, completion, correct} and {prompt, steps, labels}); the same
problems in the same order in both, each problem's two rows adjacent. `{orm,prm}_{train,eval}.jsonl` split them by
problem (a seeded `--eval-fraction` of the problems), so no question is in both splits. Problems with no number to corrupt keep only
their correct row and are counted in the printed summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSM8K = os.path.join(ROOT, "..", "shared", "data", "gsm8k_train.jsonl")
CALC = re.compile(r"<<([^=<>]*)=([-+]?\d[\d,]*\.?\d*)>>([-+]?\d[\d,]*\.?\d*)")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])")


def _other(value: str, rng: random.Random) -> str:
    """A different number of the same kind (integer stays integer)."""
    v = float(value.replace(",", ""))
    delta = rng.choice([-3, -2, -1, 1, 2, 3, 5, 10]) * (1 if abs(v) < 20 else max(1, int(abs(v) * 0.1)))
    new = v + delta
    if new == v:
        new = v + 1
    return str(int(new)) if float(new).is_integer() and "." not in value else f"{new:g}"


def corrupt(lines: list[str], rng: random.Random) -> tuple[list[str], int] | None:
    """Change one number in one reasoning line (and the final answer): (new lines, corrupted index) or None."""
    body = lines[:-1]
    calc = [i for i, line in enumerate(body) if CALC.search(line)]
    plain = [i for i, line in enumerate(body) if NUMBER.search(line)]
    cands = calc or plain
    if not cands:
        return None
    i = rng.choice(cands)
    out = list(lines)
    m = CALC.search(out[i])
    if m is not None:
        wrong = _other(m.group(2), rng)
        out[i] = out[i][: m.start()] + f"<<{m.group(1)}={wrong}>>{wrong}" + out[i][m.end():]
    else:
        nums = list(NUMBER.finditer(out[i]))
        n = nums[-1]  # the line's result is usually its last number
        out[i] = out[i][: n.start()] + _other(n.group(1), rng) + out[i][n.end():]
    final = out[-1]
    fm = re.search(r"####\s*(.+)$", final)
    if fm is not None:
        ans = fm.group(1).strip()
        out[-1] = "#### " + (_other(ans, rng) if NUMBER.fullmatch(ans.replace(",", "")) else ans + "1")
    return out, i


def build(limit: int | None, seed: int) -> tuple[list[dict], list[dict], dict]:
    rng = random.Random(seed)
    orm, prm = [], []
    stats = {"problems": 0, "correct_rows": 0, "corrupted_rows": 0, "no_number_to_corrupt": 0}
    with open(GSM8K) as f:
        for line in f:
            if limit is not None and stats["problems"] >= limit:
                break
            row = json.loads(line)
            q = f"Question: {row['question'].strip()}\nAnswer:"
            lines = [x for x in row["answer"].strip().split("\n") if x.strip()]
            stats["problems"] += 1
            orm.append({"prompt": q, "completion": " " + "\n".join(lines), "correct": 1})
            prm.append({"prompt": q, "steps": lines, "labels": [1] * len(lines)})
            stats["correct_rows"] += 1
            bad = corrupt(lines, rng)
            if bad is None:
                stats["no_number_to_corrupt"] += 1
                continue
            wrong, i = bad
            orm.append({"prompt": q, "completion": " " + "\n".join(wrong), "correct": 0})
            prm.append({"prompt": q, "steps": wrong, "labels": [1] * i + [-1] * (len(wrong) - i)})
            stats["corrupted_rows"] += 1
    return orm, prm, stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of problems held out (by problem)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    orm, prm, stats = build(args.limit, args.seed)
    os.makedirs(args.out, exist_ok=True)
    questions = sorted({r["prompt"] for r in orm})
    held = set(random.Random(args.seed + 1).sample(questions, int(round(len(questions) * args.eval_fraction))))
    for kind, rows in (("orm", orm), ("prm", prm)):
        parts = {"": rows, "_train": [r for r in rows if r["prompt"] not in held],
                 "_eval": [r for r in rows if r["prompt"] in held]}
        for suffix, part in parts.items():
            with open(os.path.join(args.out, f"{kind}{suffix}.jsonl"), "w") as f:
                for r in part:
                    f.write(json.dumps(r) + "\n")
    stats["eval_problems"] = len(held)
    print(json.dumps({**stats, "out": os.path.abspath(args.out)}))


if __name__ == "__main__":
    main()
