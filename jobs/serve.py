"""Serve a trained reward model over HTTP with Ray Serve (batched, autoscaled); Ctrl-C stops it.

    python jobs/serve.py --config configs/serve/default.yaml model=/tmp/rayrm-default/final
    ray job submit --working-dir . -- python jobs/serve.py --config configs/serve/default.yaml model=/ckpt/final

The same as `rayrm serve ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm serve --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
