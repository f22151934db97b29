"""Check a reward model on a fresh canary preference set: accuracy, calibration, reward drift vs its training stats.

    python jobs/monitor.py --config configs/monitor/default.yaml model=/tmp/rayrm-default/final canary=/data/canary.jsonl output=/tmp/monitor
    ray job submit --entrypoint-num-gpus=1 --working-dir . -- python jobs/monitor.py --config configs/monitor/default.yaml model=... canary=... output=...

Writes <output>/report.json, summary.md, reliability.png, accuracy_by_length.png, reward_hist.png.
Exit code: 0 every threshold holds, 1 a threshold is crossed (drift: alert), 2 the monitor could not run.
"""

import argparse
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from rayrm.config import MonitorConfig, load_config  # noqa: E402

OK, ALERT, ERROR = 0, 1, 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file under configs/monitor/")
    p.add_argument("overrides", nargs="*", help="dotted.key=value (model=, canary=, output= at least)")
    args = p.parse_args()
    try:
        from rayrm.monitor import run_monitor

        report = run_monitor(load_config(args.config, args.overrides, MonitorConfig))
    except Exception:  # config, data or model problems: not a drift verdict
        traceback.print_exc()
        return ERROR
    print(json.dumps({k: report[k] for k in ("passed", "alerts", "metrics", "drift", "files")}, indent=2))
    return OK if report["passed"] else ALERT


if __name__ == "__main__":
    sys.exit(main())
