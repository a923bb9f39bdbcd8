#!/usr/bin/env bash
# One-time set-up (safe to rerun): a virtual environment in .venv with torch, thinkrl and its dev tools.
# On a machine without CUDA it installs the CPU torch wheel first (TORCH_SPEC overrides the choice),
# so the range in pyproject.toml is already satisfied and pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=${TORCH_SPEC:-"torch>=2.4,<3"}         # CUDA machine: the default (CUDA) build
  else
    spec=${TORCH_SPEC:-"torch==2.13.0"}         # no CUDA: the CPU wheel
  fi
  echo "setup: installing $spec"
  "${PIP[@]}" "$spec"
fi
echo "setup: installing thinkrl[dev]"
"${PIP[@]}" -e '.[dev]'
echo "setup: done ($(.venv/bin/python -c 'import torch, thinkrl; print("torch", torch.__version__, "thinkrl", thinkrl.__version__)'))"
