"""The drift table on random weights, rerunnable anywhere (CPU: a few minutes; GPU: pass --device cuda).

    python benchmarks/quality_drift.py --out .bench/drift                     # CPU, as in docs/quality.md
    python benchmarks/quality_drift.py --out .bench/drift --device cuda \
        --configs fp16,bf16,graphs,fp16+graphs,fp16+graphs+compile,fast,tiled --steps 50 --warmup 1

Generates two 128x128 textured HQ images (fixed seed), degrades them with the `realesrgan` preset (x4), and
runs `python -m model eval --preset tiny` on them; prints the drift table, writes the report under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.cli import main as model_cli


def make_hq(folder: Path, count: int = 2, size: int = 128) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size]
    for i in range(count):
        img = np.stack([(x * (2 + i)) % 256, (y * 3) % 256, ((x + y) * (1 + i)) % 256], -1)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="fp16,bf16,graphs,fast,tiled")
    p.add_argument("--steps", default="4")
    p.add_argument("--warmup", default="0")
    args = p.parse_args()
    make_hq(args.out / "hq")
    if model_cli(["degrade", str(args.out / "hq"), "-o", str(args.out / "lq"), "--preset", "realesrgan"]):
        return 1
    return model_cli(
        [
            "-v", "eval", str(args.out / "lq"), "--hq", str(args.out / "hq"), "-o", str(args.out / "eval"),
            "--preset", "tiny", "--device", args.device, "--steps", args.steps, "--warmup", args.warmup,
            "--configs", args.configs, "--crop", "96",
        ]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
