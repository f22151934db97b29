"""Serve a trained reward model over HTTP with Ray Serve (batched, autoscaled, OpenRLHF-compatible route).

    python jobs/serve.py --config configs/serve/default.yaml model=/tmp/rayrm-default/final
    python jobs/serve.py --config configs/serve/default.yaml model=/ckpt/final port=8001 max_replicas=4
    ray job submit --working-dir . -- python jobs/serve.py --config configs/serve/default.yaml model=/ckpt/final

Deploys `rayrm.serve.RewardServer` on the current Ray cluster (a local one when none is running), prints the URL
and serves until Ctrl-C, then deletes the app. The same app from a Serve config file: `serve run
configs/serve/reward.yaml`. Routes: POST /v1/rewards, POST /get_reward, GET /v1/model, GET /healthz, GET /docs.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.config import ServeConfig, load_config  # noqa: E402
from rayrm.serve import run_server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file under configs/serve/ (ServeConfig fields)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value (model= at least)")
    args = p.parse_args()
    run_server(load_config(args.config, args.overrides, ServeConfig))


if __name__ == "__main__":
    main()
