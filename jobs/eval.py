"""Evaluate reward models on a preference suite (RewardBench formats), scored with Ray Data; A/B with several.

    python jobs/eval.py --config configs/eval/default.yaml model=/tmp/rm/final input=/data/reward-bench.parquet output=/tmp/eval
    ray job submit --working-dir . -- python jobs/eval.py --config configs/eval/default.yaml model=... input=... output=...

The same as `rayrm eval ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm eval --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["eval", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
