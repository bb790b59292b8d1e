#!/usr/bin/env bash
# Creates ./.venv (once) with torch and the test/demo extras. Safe to run again: it only adds what is missing.
#   usage: bash tools/setup-venv.sh            (then use .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch + torchvision: the versions whose wheels are on our machines (ComfyUI also needs torchvision).
.venv/bin/python -c "import torch, torchvision" 2>/dev/null \
  || .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -c "import diffusers, pytest, safetensors, einops, matplotlib, tqdm" 2>/dev/null \
  || .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
