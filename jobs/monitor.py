"""Check a reward model on a fresh canary preference set; exit 0 ok, 1 a threshold is crossed, 2 could not run.

    python jobs/monitor.py --config configs/monitor/default.yaml model=/tmp/rayrm-default/final canary=/data/canary.jsonl output=/tmp/monitor
    ray job submit --working-dir . -- python jobs/monitor.py --config configs/monitor/default.yaml model=... canary=... output=...

The same as `rayrm monitor ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm monitor --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["monitor", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
