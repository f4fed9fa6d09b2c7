#!/usr/bin/env bash
# README command 1: set up, start Redis + API + worker, restore a sample image through the client, stop all.
# Everything it starts is stopped again on exit, failure or Ctrl-C (scripts/demo.py owns the processes).
# Options are passed to scripts/demo.py (--preset tiny, --no-download, --steps N, --serve ...). It prints the
# page's address (http://127.0.0.1:PORT/); --serve keeps the stack up afterwards for it, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python scripts/demo.py "$@"
