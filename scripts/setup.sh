#!/usr/bin/env bash
# Create a virtual environment (default .venv, or $GCONV_VENV) and install gconv into it with its
# native extensions and test extras. Safe to re-run: it rebuilds only when sources changed.
#
# torch is installed first and pinned (GCONV_TORCH_SPEC, default torch==2.13.0) so that nothing
# later pulls a CUDA build of torch onto a CPU machine; on a GPU machine point GCONV_TORCH_SPEC at
# the CUDA build you want (or pre-install torch in the venv), and the CUDA extension is built too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${GCONV_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.gconv-installed"
if [ -f "$stamp" ] && [ -z "$(find setup.py pyproject.toml csrc -newer "$stamp" -print -quit 2>/dev/null)" ] \
   && "$VPY" -c "import gconv" 2>/dev/null; then
  echo "[setup] $VENV is up to date" >&2
  exit 0
fi
"$VPY" -m pip install -q --upgrade "setuptools>=64" wheel "pybind11>=2.10" ninja
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${GCONV_TORCH_SPEC:-torch==2.13.0}" >&2
  "$VPY" -m pip install -q "${GCONV_TORCH_SPEC:-torch==2.13.0}"
fi
echo "[setup] installing gconv (building the C++ extension; ~2 min on 2 cores)" >&2
"$VPY" -m pip install -q --no-build-isolation -e ".[test]"
touch "$stamp"
"$VPY" -c "import gconv, json; print(json.dumps({k: v['active'] for k, v in gconv.backends().items()}))" >&2
