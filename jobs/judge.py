"""Judge preference pairs with a local causal LM (Ray Data), both presentation orders averaged.

    python jobs/judge.py --config configs/judge/default.yaml model=Qwen/Qwen3-0.6B input=/data/pairs.jsonl output=/tmp/judged

Writes Parquet to <output>: every input column + `p_a_better` (P(response A better), order-debiased) + `verdict`.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.config import JudgeConfig, load_config  # noqa: E402
from rayrm.judge import run_judging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file under configs/judge/")
    p.add_argument("overrides", nargs="*", help="dotted.key=value (model=, input=, output= at least)")
    args = p.parse_args()
    print(json.dumps(run_judging(load_config(args.config, args.overrides, JudgeConfig)), indent=2))


if __name__ == "__main__":
    main()
