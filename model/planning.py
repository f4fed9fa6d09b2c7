"""Sizes and memory: the size stage 2 runs at, which stages must run tiled to fit the memory budget, and how
many images share a batch.

Estimates are activation bytes from image sizes, the precision and the nets' widths (no trial runs): an OOM
costs a whole job, a needless tile only a little speed. The numbers are in docs/model.md, "Tiling and memory".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from model import imageops
from model.errors import InvalidInputError
from model.sampling import Tiling
from model.tiled_vae import DECODER_PAD, ENCODER_PAD
from model.tiling import num_tiles

# Activation estimates in bytes per element size (x2 for fp16, x4 for fp32), scaled by model width for other
# presets. Measured with benchmarks/gpu.py (full SD 2.1 sizes, SDPA, H200): UNet+ControlNet about 37 kB/elem
# per latent cell and batch row at 512 px batch 8; VAE decode up to ~1.4 kB/elem per pixel (fp32). The UNet
# figure keeps a 2x margin because an OOM costs a whole job while a needless tile costs a little speed.
UNET_BYTES_PER_CELL = 90_000  # UNet + ControlNet forward, per latent cell per batch row
VAE_BYTES_PER_PIXEL = 1_500  # encoder or decoder at full res (256 channels x a few live tensors, workspaces)
STAGE1_BYTES_PER_OUT_PIXEL = 600  # 64 feature channels at output resolution x a few live tensors
IMAGE_BYTES_PER_PIXEL = 3 * 4 * 8  # float32 RGB copies alive during colour fix / resize (~8)
# Widths the estimates were measured at (SD 2.1: UNet model_channels, VAE ch).
UNET_REFERENCE_WIDTH = 320
VAE_REFERENCE_WIDTH = 128

# The reference runs the diffusion with the short side at >= 512 px (SD 2.1-base's training size).
FULL_MIN_SHORT_EDGE = 512
# The tiny preset is for smoke tests: keep its diffusion small so CPU runs stay fast.
TINY_MIN_SHORT_EDGE = 64
PAD_MULTIPLE = 64  # pixels; the reference pads the stage-1 image to this before the VAE
LATENT_PAD_MULTIPLE = 8  # latent cells (a no-op after the 64-pixel pad, kept to mirror the reference)
LATENT_DOWNSCALE = 8  # pixels per latent cell (SD's VAE)
# Most tiles of one image per forward. Past ~8 windows of 512 px (batch 16 with CFG) an H100/H200 is
# saturated, so more would only grow the memory a CUDA graph of that shape pins in its pool.
MAX_TILES_PER_FORWARD = 8


@dataclass(frozen=True)
class TileSizes:
    """Window sizes used when a stage must be tiled; strides leave a quarter of overlap for the blending."""

    stage1: tuple[int, ...] = (512, 256, 128)  # input pixels, tried largest first (SwinIR needs x64)
    latent: int = 64  # latent cells (512 px windows, as the reference's default)
    vae_encode: int = 512  # pixels
    vae_decode: int = 64  # latent cells

    @staticmethod
    def stride(tile: int) -> int:
        return max(1, tile * 3 // 4)


FULL_TILES = TileSizes()
# Tiny preset: small windows so tiling is exercised on test-sized images.
TINY_TILES = TileSizes(stage1=(64,), latent=8, vae_encode=64, vae_decode=8)


@dataclass(frozen=True)
class TilePlan:
    """Which parts run tiled for one batch (None = untiled)."""

    stage1_tile: int | None = None  # input pixels
    stage1_stride: int | None = None  # None: 3/4 of the tile
    latent: Tiling | None = None  # its `batch`: windows per UNet+ControlNet forward
    vae_encode: int | None = None  # window in pixels
    vae_decode: int | None = None  # window in latent cells
    # Windows per forward of the tiled stage-1 net (see `tiles_per_forward`). The shared-GroupNorm VAE tiles
    # run one per forward: stacking them measured slower on the CPU (benchmarks/tile_batching.py) and would
    # spend the memory that lets waiting tiles stay on the GPU.
    stage1_batch: int = 1
    # Bytes of tiled-VAE tiles that may wait on the compute device between GroupNorms (the budget less one
    # tile's forward); the rest wait in host memory (`model.tiled_vae.run_tiled`).
    vae_keep_bytes: int = 0

    @property
    def any(self) -> bool:
        return bool(self.stage1_tile or self.latent or self.vae_encode or self.vae_decode)


@dataclass(frozen=True)
class NetSizes:
    """What the estimates read from one task's nets."""

    elem: int  # bytes per element of the nets' dtype
    unet_width: int  # UNet model_channels
    vae_width: int  # VAE ch
    stage1_kind: str  # "swinir" runs at the diffusion size when untiled, the others at the output size
    stage1_scale: int

    @property
    def unet_ratio(self) -> float:
        return self.unet_width / UNET_REFERENCE_WIDTH

    @property
    def vae_ratio(self) -> float:
        return self.vae_width / VAE_REFERENCE_WIDTH


def latent_size(h: int, w: int) -> tuple[int, int]:
    """A diffusion size in pixels -> its latent size; refuses sizes no padded image can have."""
    if h <= 0 or w <= 0 or h % PAD_MULTIPLE or w % PAD_MULTIPLE:
        raise InvalidInputError(f"compile sizes must be positive multiples of {PAD_MULTIPLE} px, got {h}x{w}")
    return h // LATENT_DOWNSCALE, w // LATENT_DOWNSCALE


def default_budget(device: torch.device, reserved_bytes: int = 0) -> int:
    """Bytes available for activations: CUDA free memory (plus what the allocator holds but does not use,
    less `reserved_bytes` it holds for something else), or half of the machine's RAM on CPU. Taken at every
    call, so other processes on the GPU are accounted for."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(max(0, free + cached - reserved_bytes) * 0.85)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def tiles_per_forward(window_bytes: float, budget: int, windows: int) -> int:
    """How many windows of one image share a forward: as many as `budget` holds (each window costs
    `window_bytes` of activations), at most `windows` and `MAX_TILES_PER_FORWARD`, at least one."""
    fits = int(budget // max(1.0, window_bytes))
    return max(1, min(fits, windows, MAX_TILES_PER_FORWARD))


@dataclass(frozen=True)
class Planner:
    """Sizes and tiling for one pipeline: its tile windows and the short side stage 2 runs at."""

    tiles: TileSizes = FULL_TILES
    min_short_edge: int = FULL_MIN_SHORT_EDGE

    def diffusion_size(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the image stage 2 runs on: the output size, short side raised to `min_short_edge`."""
        h, w = out_hw
        if min(h, w) < self.min_short_edge:
            h, w = imageops.short_edge_size(h, w, self.min_short_edge)
        return h, w

    def plan(
        self,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        nets: NetSizes,
        batch: int,
        cfg: bool,
        budget: int,
    ) -> TilePlan:
        """Tile whatever would not fit `budget` bytes."""
        e = nets.elem
        h, w = self.diffusion_size(out_hw)
        ph, pw = h + (-h) % PAD_MULTIPLE, w + (-w) % PAD_MULTIPLE
        lh, lw = ph // LATENT_DOWNSCALE, pw // LATENT_DOWNSCALE
        rows = batch * (2 if cfg else 1)
        unet = UNET_BYTES_PER_CELL * e * nets.unet_ratio
        vae = VAE_BYTES_PER_PIXEL * e * nets.vae_ratio
        sizes = self.tiles
        latent = None
        if unet * lh * lw * rows > budget and max(lh, lw) > sizes.latent:
            stride = sizes.stride(sizes.latent)
            cells = min(lh, sizes.latent) * min(lw, sizes.latent)
            k = tiles_per_forward(unet * cells * rows, budget, num_tiles(lh, lw, sizes.latent, stride))
            latent = Tiling(sizes.latent, stride, batch=k)
        too_big = vae * ph * pw * batch > budget
        vae_encode = sizes.vae_encode if too_big and max(ph, pw) > sizes.vae_encode else None
        vae_decode = sizes.vae_decode if too_big and max(lh, lw) > sizes.vae_decode else None
        # The VAE's largest single-tile forward (a tile's input is its core plus the pad on every side).
        working = 0.0
        if vae_encode:
            side = vae_encode + 2 * ENCODER_PAD
            working = vae * min(ph, side) * min(pw, side) * batch
        if vae_decode:
            side, d = vae_decode + 2 * DECODER_PAD, LATENT_DOWNSCALE
            working = max(working, vae * min(lh, side) * d * min(lw, side) * d * batch)
        vae_keep = int(max(0.0, budget - working)) if (vae_encode or vae_decode) else 0
        # SwinIR runs at the diffusion size when untiled (see `DiffBIRPipeline.run_stage1`), the others at
        # the output size.
        s1_hw = (h, w) if nets.stage1_kind == "swinir" else out_hw
        scale = nets.stage1_scale
        s1_out = (s1_hw[0] * s1_hw[1]) if scale == 1 else in_hw[0] * in_hw[1] * scale**2
        s1_bytes = STAGE1_BYTES_PER_OUT_PIXEL * e
        stage1_tile = None
        stage1_batch = 1
        if s1_bytes * s1_out * batch > budget:
            for tile in sizes.stage1:
                stage1_tile = tile
                if s1_bytes * (tile * scale) ** 2 * batch <= budget:
                    break
            # Tiled, the net's input is the output size for x1 nets, the input size for BSRNet (run_stage1).
            s1_in = out_hw if scale == 1 else in_hw
            n = num_tiles(*s1_in, stage1_tile, sizes.stride(stage1_tile))
            stage1_batch = tiles_per_forward(s1_bytes * (stage1_tile * scale) ** 2 * batch, budget, n)
        return TilePlan(
            stage1_tile=stage1_tile,
            latent=latent,
            vae_encode=vae_encode,
            vae_decode=vae_decode,
            stage1_batch=stage1_batch,
            vae_keep_bytes=vae_keep,
        )

    def item_bytes(
        self, in_hw: tuple[int, int], out_hw: tuple[int, int], nets: NetSizes, cfg: bool, budget: int
    ) -> int:
        """Rough activation bytes one more image adds to a stage-2 batch, after tiling."""
        plan = self.plan(in_hw, out_hw, nets, 1, cfg, budget)
        h, w = self.diffusion_size(out_hw)
        d = LATENT_DOWNSCALE
        # Tiled: the windows that share a forward are alive together.
        cells = (
            (plan.latent.tile**2 * plan.latent.batch) if plan.latent else math.ceil(h / d) * math.ceil(w / d)
        )
        unet = UNET_BYTES_PER_CELL * nets.elem * nets.unet_ratio * cells * (2 if cfg else 1)
        return int(unet + IMAGE_BYTES_PER_PIXEL * max(h * w, out_hw[0] * out_hw[1]))

    def chunks(self, members: list[int], item_bytes: int, budget: int) -> list[list[int]]:
        """`members` in batches of as many items as `budget` holds (at least one each)."""
        size = max(1, int(budget // max(1, item_bytes)))
        return [members[i : i + size] for i in range(0, len(members), size)]
