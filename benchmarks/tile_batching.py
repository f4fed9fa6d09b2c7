"""Tile batching on the CPU: one forward per window (sequential) against several windows per forward, in the
same run, for the `mid` config (benchmarks/sampler_bench.py) -- latent tiles in the sampler, VAE encode and
decode tiles (blended windows, and the pipeline's seam-free shared-GroupNorm tiles), and stage-1 (BSRNet)
tiles.

    python benchmarks/tile_batching.py --out benchmarks/results/tile-batching-cpu.json

Reports wall times and `sequential / batched` per part (> 1: batching is faster), plus the largest difference
between the two outputs (they must agree to fp32 rounding). Random weights: the numbers are about cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench import MID  # the same mid config as the CPU loop benchmark

from model.cldm import Condition
from model.loading import build_cldm
from model.sampling import SpacedSampler, Tiling, sample
from model.schedule import make_diffusion
from model.stage1 import build_stage1
from model.tiled_vae import DECODER_PAD, ENCODER_PAD, decode_tiled_gn, encoder_tiled_gn, split_tiles
from model.tiling import num_tiles


def compare(name: str, run: Callable[[int], torch.Tensor], batch: int, repeats: int) -> dict[str, Any]:
    """`run(1)` (sequential: one window per forward) and `run(batch)` alternated in one run (same load, same
    warm caches): one warm-up each, then the best of `repeats` timed calls each, in turns, so a load change
    hits both alike."""

    def seq() -> torch.Tensor:
        return run(1)

    def bat() -> torch.Tensor:
        return run(batch)

    y_seq, y_bat = seq(), bat()
    t_seq = t_bat = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        y_seq = seq()
        t_seq = min(t_seq, time.perf_counter() - start)
        start = time.perf_counter()
        y_bat = bat()
        t_bat = min(t_bat, time.perf_counter() - start)
    entry = {
        "sequential_s": t_seq,
        "batched_s": t_bat,
        "sequential_over_batched": t_seq / t_bat,
        "max_abs_diff": (y_seq.double() - y_bat.double()).abs().max().item(),
        "max_abs_ref": y_seq.abs().max().item(),
    }
    print(
        f"{name:28} seq {t_seq:8.3f}s  batched {t_bat:8.3f}s  ratio {t_seq / t_bat:5.2f}x  "
        f"diff {entry['max_abs_diff']:.2e}",
        flush=True,
    )
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="windows per forward in the batched runs")
    parser.add_argument(
        "--latent", type=int, default=48, help="latent side (cells); windows of 16, stride 12"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    model = build_cldm(MID, "sd").eval()
    lat, tile, stride = args.latent, 16, 12
    g = torch.Generator().manual_seed(0)
    c_img = torch.randn(1, 4, lat, lat, generator=g)
    x_T = torch.randn(1, 4, lat, lat, generator=g)
    cond = Condition(model.text.encode(["a photo"]), c_img)
    uncond = Condition(model.text.encode(["low quality"]), c_img)
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "device": platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "config": "mid",
        "steps": args.steps,
        "tiles_per_forward": args.batch,
        "parts": {},
    }
    parts = results["parts"]

    def run_sampler(batch: int) -> torch.Tensor:
        gen = [torch.Generator().manual_seed(0)]
        sampler = SpacedSampler(make_diffusion())
        tiling = Tiling(tile, stride, batch)
        return sample(model, sampler, x_T, cond, uncond, args.steps, 4.0, 1.0, tiling=tiling, generator=gen)

    windows = num_tiles(lat, lat, tile, stride)
    parts["sampler_cfg"] = compare(
        f"sampler {lat}x{lat} ({windows} win)",
        run_sampler,
        args.batch,
        args.repeats,
    )
    parts["sampler_cfg"].update(latent=lat, tile=tile, stride=stride, windows=windows)

    vae = model.vae
    px = lat * 8
    image = torch.rand(1, 3, px, px, generator=g) * 2 - 1
    enc_tile, enc_stride = tile * 8, stride * 8
    parts["vae_encode"] = compare(
        f"vae encode {px}x{px}",
        lambda b: vae.posterior_tiled(image, enc_tile, enc_stride, batch=b).parameters,
        args.batch,
        args.repeats,
    )
    parts["vae_encode"].update(size=px, tile=enc_tile, windows=num_tiles(px, px, enc_tile, enc_stride))
    dec_tile, dec_stride = 8, 6
    parts["vae_decode"] = compare(
        f"vae decode {lat}x{lat}",
        lambda b: vae.decode_tiled(c_img, dec_tile, dec_stride, batch=b),
        args.batch,
        args.repeats,
    )
    parts["vae_decode"].update(latent=lat, tile=dec_tile, windows=num_tiles(lat, lat, dec_tile, dec_stride))

    # The pipeline's tiled VAE: seam-free tiles with shared GroupNorm statistics (model/tiled_vae.py).
    gn_enc_tile = 64
    parts["vae_encode_gn"] = compare(
        f"vae encode gn {px}x{px}",
        lambda b: encoder_tiled_gn(vae, image, gn_enc_tile, batch=b),
        args.batch,
        args.repeats,
    )
    parts["vae_encode_gn"].update(
        size=px, tile=gn_enc_tile, tiles=len(split_tiles(px, px, gn_enc_tile, ENCODER_PAD, int))
    )
    gn_dec_tile = 8
    parts["vae_decode_gn"] = compare(
        f"vae decode gn {lat}x{lat}",
        lambda b: decode_tiled_gn(vae, c_img, gn_dec_tile, batch=b),
        args.batch,
        args.repeats,
    )
    parts["vae_decode_gn"].update(
        latent=lat, tile=gn_dec_tile, tiles=len(split_tiles(lat, lat, gn_dec_tile, DECODER_PAD, int))
    )

    bsrnet = build_stage1("bsrnet", preset="tiny").eval()
    lq = torch.rand(1, 3, 96, 96, generator=g)
    s1_tile, s1_stride = 32, 24
    parts["stage1_bsrnet"] = compare(
        "stage1 bsrnet 96->384",
        lambda b: bsrnet.forward_tiled(lq, s1_tile, s1_stride, batch=b),
        args.batch,
        args.repeats,
    )
    parts["stage1_bsrnet"].update(input=96, tile=s1_tile, windows=num_tiles(96, 96, s1_tile, s1_stride))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
