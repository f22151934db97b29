#!/usr/bin/env bash
# Fresh machine -> test results: installs, then runs the whole suite (unit tests + real local Ray cluster tests).
# Unit tests alone: python3 -m pytest -m "not integration"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
python3 -m pytest -q -ra --durations=15 "$@"
