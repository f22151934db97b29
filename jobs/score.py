"""Score RL rollouts offline with a trained reward model (Ray Data), with best-of-N per prompt id.

    python jobs/score.py --config configs/score/default.yaml model=/tmp/rm/final input='/data/rollouts/*.parquet' output=/data/scored
    ray job submit --working-dir . -- python jobs/score.py --config configs/score/default.yaml model=... input=... output=...

Writes <output>/rewards/part-*.parquet (every input column + reward, reward_normalized, model), <output>/best_of_n/
and, only when every input row was scored exactly once, <output>/_SUCCESS.json with the summary. Rerunning an
interrupted job with the same output scores only what is missing.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.config import ScoreConfig, load_config  # noqa: E402
from rayrm.score import run_scoring  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file under configs/score/")
    p.add_argument("overrides", nargs="*", help="dotted.key=value (model=, input=, output= at least)")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides, ScoreConfig)
    print(json.dumps(run_scoring(cfg), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
