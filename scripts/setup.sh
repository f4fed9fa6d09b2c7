#!/usr/bin/env bash
# Create .venv and install the project with the pinned constraints. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first, alone: with the exact pins pip takes the local wheels instead of downloading a CUDA build.
    .venv/bin/python -m pip install -q -c constraints.txt torch torchvision
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
