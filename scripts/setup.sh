#!/usr/bin/env bash
# Create .venv and install the project with the pinned constraints. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System tools the tests need: redis-server (test fixtures, demo) and docker-compose (validates the compose
# file; no Docker engine needed). Installed with apt when missing; a second run checks and moves on.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
        echo "setup: installing ${missing[*]} with apt-get" >&2
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install ${missing[*]} (needed by the tests)" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first, alone: with the exact pins pip takes the local wheels instead of downloading a CUDA build.
    .venv/bin/python -m pip install -q -c constraints.txt torch torchvision
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
    # pyiqa (learned quality metrics) without its declared dependencies: see the `eval` extra in pyproject.toml.
    .venv/bin/python -m pip install -q --no-deps -c constraints.txt pyiqa
    rm -f .venv/.installed-*
    touch "$stamp"
fi
