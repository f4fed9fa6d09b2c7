"""How far tiled VAE output is from the untiled one: window blending (`VAE.encode_tiled` / `decode_tiled`) vs
shared GroupNorm statistics (`model/tiled_vae.py`), on a large synthetic image.

    python benchmarks/tilevae_seams.py [--size 1024] [--out results.json]

Uses the tiny VAE with the reference fixture weights (set DIFFBIR_REFERENCE_DIR if ../shared/reference is
elsewhere) on CPU, float32. The image is smooth random colour fields plus fine noise in [-1, 1]; the decoder
input is the untiled encoding of that image. Per tile size and method:

- max / mean |tiled - untiled| (latent for the encoder, image for the decoder);
- seam jump: the largest change of that error between neighbouring pixels. A seam is where the error jumps;
  blending smears errors out (no jump, error everywhere), hard-edged tiles leave a step at their borders;
- wall time relative to the untiled pass in the same run.

Blended windows use the pipeline's stride (3/4 of the window); shared-statistics tiles use the window size as
their core, plus upstream's pad. Each runs twice: as loaded, and with the mid-block attention's output zeroed
(`attention off`). No tiling can share attention, and the random weights make it strongly non-local, so the
second run shows what is left from the convolutions alone. Random weights: the numbers compare tilings; they
are not image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.loading import load_reference_tiny
from model.tiled_vae import decode_tiled_gn, encode_tiled_gn
from model.vae import VAE

REFERENCE = Path(
    os.environ.get("DIFFBIR_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference")
)


def synthetic_image(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 64, size // 64, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic")
    fine = 0.1 * torch.randn(1, 3, size, size, generator=g)
    return (smooth * 2 - 1 + fine).clamp(-1, 1)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def seam_jump(err: torch.Tensor) -> float:
    """Largest change of the error field between horizontally or vertically neighbouring pixels."""
    dx = (err[..., :, 1:] - err[..., :, :-1]).abs().max()
    dy = (err[..., 1:, :] - err[..., :-1, :]).abs().max()
    return max(dx.item(), dy.item())


def row(
    name: str, out: torch.Tensor, seconds: float, ref: torch.Tensor, ref_seconds: float
) -> dict[str, Any]:
    err = out.float() - ref.float()
    result = {
        "method": name,
        "max_abs_diff": round(err.abs().max().item(), 5),
        "mean_abs_diff": round(err.abs().mean().item(), 5),
        "seam_jump": round(seam_jump(err), 5),
        "seconds": round(seconds, 2),
        "time_vs_untiled": round(seconds / ref_seconds, 2),
    }
    print(
        f"    {name:36s} max|diff| {result['max_abs_diff']:8.4f}  mean {result['mean_abs_diff']:.4f}  "
        f"seam jump {result['seam_jump']:7.4f}  time x{result['time_vs_untiled']:.2f}"
    )
    return result


def compare_tilings(
    untiled: Callable[[], torch.Tensor],
    blended: Callable[[int, int], torch.Tensor],
    shared: Callable[[int], torch.Tensor],
    tiles: list[int],
    unit: str,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The untiled output and, per tile size, a row for the blended windows and one for shared statistics."""
    ref, ref_seconds = timed(untiled)
    rows = []
    for tile in tiles:
        stride = tile * 3 // 4
        out, s = timed(lambda tile=tile, stride=stride: blended(tile, stride))
        rows.append(
            {"tile": tile, **row(f"blended windows {tile}/{stride} {unit}", out, s, ref, ref_seconds)}
        )
        out, s = timed(lambda tile=tile: shared(tile))
        rows.append({"tile": tile, **row(f"shared GroupNorm {tile} {unit} tiles", out, s, ref, ref_seconds)})
    return ref, rows


def measure(
    vae: VAE, img: torch.Tensor, encoder_tiles: list[int], decoder_tiles: list[int]
) -> dict[str, Any]:
    print(f"  encoder, {img.shape[-1]} px image -> latent")
    z, encoder = compare_tilings(
        lambda: vae.encode(img),
        lambda tile, stride: vae.encode_tiled(img, tile, stride),
        lambda tile: encode_tiled_gn(vae, img, tile),
        encoder_tiles,
        "px",
    )
    print(f"  decoder, {z.shape[-1]} latent -> image")
    image, decoder = compare_tilings(
        lambda: vae.decode(z),
        lambda tile, stride: vae.decode_tiled(z, tile, stride),
        lambda tile: decode_tiled_gn(vae, z, tile),
        decoder_tiles,
        "latent",
    )
    return {
        "max_abs_z": z.abs().max().item(),
        "max_abs_image": image.abs().max().item(),
        "image_own_max_jump": seam_jump(image),
        "encoder": encoder,
        "decoder": decoder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (multiple of 64)")
    parser.add_argument("--encoder-tiles", type=int, nargs="+", default=[256, 512], help="pixels")
    parser.add_argument("--decoder-tiles", type=int, nargs="+", default=[32, 64], help="latent cells")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    vae = load_reference_tiny(REFERENCE / "tiny", diffusion="sd").vae
    img = synthetic_image(args.size)
    results: dict[str, Any] = {"size": args.size, "threads": torch.get_num_threads()}
    print("as loaded")
    results["as_loaded"] = measure(vae, img, args.encoder_tiles, args.decoder_tiles)
    with torch.no_grad():
        for net in (vae.autoencoder.encoder, vae.autoencoder.decoder):
            for attn in net.mid_block.attentions:
                attn.to_out[0].weight.zero_()
                attn.to_out[0].bias.zero_()
    print("attention off")
    results["attention_off"] = measure(vae, img, args.encoder_tiles, args.decoder_tiles)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
