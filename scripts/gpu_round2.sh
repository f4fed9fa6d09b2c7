#!/usr/bin/env bash
# Round-2 GPU benchmark (issue 16) in one command for the device machine (H200), under 10 minutes:
#   bash scripts/gpu_wheels.sh            # here, once: the wheels the device image lacks, into .whl/
#   device run, carry [".whl"], timeout_s 600:  bash scripts/gpu_round2.sh
# Extra arguments go to benchmarks/gpu.py, e.g. a follow-up on a still-warm machine for legs the first run
# had no time for:  R2_NAME=levers BUDGET_S=200 bash scripts/gpu_round2.sh --legs lever_
# Results: $OUT/gpu-h200-round2${R2_NAME:+-$R2_NAME}.json (copy to benchmarks/results/) and its log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
BUDGET_S=${BUDGET_S:-530}  # legs that would end later are recorded as skipped
NAME=gpu-h200-round2${R2_NAME:+-$R2_NAME}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# A new, empty inductor cache: the first compilation is a true cold start; the cold-start leg then gives a
# second process only the saved artifacts file (and another empty cache dir).
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/inductor-XXXX)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
timeout $((BUDGET_S + 50)) python3 benchmarks/gpu.py --round2 --budget-s "$BUDGET_S" \
    --compile-cache /tmp/diffbir-compile-cache.bin --out "$OUT/$NAME.json" "$@" 2>&1 | tee "$OUT/$NAME.log"
