#!/usr/bin/env bash
# Create .venv and install the project with the pinned constraints. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System tools the tests need: redis-server (test fixtures, demo), docker-compose (validates the compose
# file; no Docker engine needed) and promtool (checks and unit-tests the alert rules; Debian ships it in the
# prometheus package, whose server the tests do not use: on a host with systemd, `systemctl disable --now
# prometheus` if apt started it). Installed with apt when missing; a second run checks and moves on.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
        echo "setup: installing ${missing[*]} with apt-get" >&2
        "${sudo[@]}" apt-get update -qq
        # No recommends: they are daemons and a Docker engine (node exporter, docker.io) the tests never use.
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
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
    rm -f .venv/.installed-*
    touch "$stamp"
fi
