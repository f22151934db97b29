"""Score rollouts offline with a trained reward model (Ray Data), with best-of-N per prompt id.

    python jobs/score.py --config configs/score/default.yaml model=/tmp/rm/final input='/data/rollouts/*.parquet' output=/data/scored
    ray job submit --working-dir . -- python jobs/score.py --config configs/score/default.yaml model=... input=... output=...

The same as `rayrm score ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm score --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["score", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
