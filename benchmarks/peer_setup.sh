#!/usr/bin/env bash
# The PyTorch peer's own virtual environment (.venv-peer), kept apart from tfllm's .venv so that
# torch never enters the product's. `pip install torch==2.13.0` takes the CPU wheel these
# machines carry on disk (a plain `torch` would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-peer/bin/python ]; then
  python3.11 -m venv .venv-peer
fi
.venv-peer/bin/pip install -q -U pip
.venv-peer/bin/pip install -q torch==2.13.0 "transformers>=4.57,<5" "datasets>=4.0,<4.5" "accelerate>=1.0"
.venv-peer/bin/python -c "import torch, transformers; print('peer: torch', torch.__version__, 'transformers', transformers.__version__)"
