#!/usr/bin/env bash
# Fresh machine -> trained reward model: installs, starts a local Ray cluster, trains the embedded default (a tiny
# Qwen3 built from configs/models/tiny-qwen3 on ../shared/data HH pairs, 2 workers, DeepSpeed ZeRO-2), prints the
# held-out metrics, the export and the commands that use it. Extra args are config overrides or flags, e.g.
# `bash scripts/demo.sh data.max_pairs=400 --verbose`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
"$PY" -m rayrm train --config configs/train/default.yaml "$@"
