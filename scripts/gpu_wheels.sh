#!/usr/bin/env bash
# Download here the wheels scripts/gpu_round2.sh installs on the device machine (its image has torch, numpy,
# safetensors, huggingface-hub, timm, regex, pillow ... but not these). Versions: constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^${1//-/[-_]}==" constraints.txt | head -1; }
mkdir -p .whl
for name in diffusers importlib_metadata lazy-importer open_clip_torch spandrel ftfy wcwidth torchao; do
    spec=$(pin "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${spec:-$name}"
done
du -sh .whl
