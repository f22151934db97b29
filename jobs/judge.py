"""Judge preference pairs with a local causal LM (Ray Data), both presentation orders averaged.

    python jobs/judge.py --config configs/judge/default.yaml model=Qwen/Qwen3-0.6B input=/data/pairs.jsonl output=/tmp/judged

The same as `rayrm judge ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm judge --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["judge", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
