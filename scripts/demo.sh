#!/usr/bin/env bash
# Fresh machine -> trained reward model: installs, starts a local Ray cluster (ray.init inside the job), trains the
# embedded default (tiny Qwen3 from configs/models/tiny-qwen3 on ../shared/data HH pairs, 2 workers, DeepSpeed ZeRO-2)
# and prints the held-out metrics. Extra args are config overrides, e.g. `bash scripts/demo.sh data.max_pairs=400`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=1
python3 jobs/train.py --config configs/train/default.yaml "$@"
