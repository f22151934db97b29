"""Train a reward model with Ray Train + DeepSpeed; the export lands in <output_dir>/final.

    python jobs/train.py --config configs/train/default.yaml [dotted.key=value ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/train/minilm_hh.yaml output_dir=/tmp/rm

The same as `rayrm train ...` (rayrm/cli.py), for `ray job submit` from a checkout: `rayrm train --help` lists the keys.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.cli import main as cli_main  # noqa: E402


def main() -> int:
    return cli_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
