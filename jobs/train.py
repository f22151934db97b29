"""Train a reward model with Ray Train + DeepSpeed.

    python jobs/train.py --config configs/train/default.yaml [dotted.key=value ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/train/minilm_hh.yaml output_dir=/tmp/rm

The export (HF dir + rayrm.json) lands in <output_dir>/final.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.config import TrainConfig, load_config  # noqa: E402
from rayrm.train import run_training  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file under configs/train/")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides, TrainConfig)
    metrics = run_training(cfg)
    print(json.dumps({"final_metrics": metrics, "export": os.path.join(os.path.abspath(cfg.output_dir), "final")}, indent=2))


if __name__ == "__main__":
    main()
