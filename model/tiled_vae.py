"""Seam-free tiled VAE: tiles that share GroupNorm statistics, as upstream DiffBIR's tiled VAE (Li Yi's
VAEHook).

Why: encoding or decoding overlapping windows independently and blending them (`VAE.encode_tiled` /
`decode_tiled`) gives each window its own GroupNorm mean and variance, so neighbouring windows disagree and
the blend shows as seams. Here every tile runs the network layer by layer; at each GroupNorm the tiles'
statistics are combined (pixel-weighted means of the per-tile mean and variance) and every tile is normalised
with the same numbers, so the tiles behave like one image except where a 3x3 conv or the mid-block attention
sees past its tile (the pad of 32 px / 11 latent px keeps those effects inside the discarded margin). The
cropped cores are copied into the output: no blending.

Layout (upstream's `split_tiles`): cores of about `tile` (rounded up to a multiple of 32, 16, 8, 4 or 2) start
`pad` from the top-left edge; a core within `pad` of an image edge extends its output to that edge; each
tile's input is its core plus `pad` on every side, clipped to the image. Images no larger than `tile + 2*pad`
run whole. Speed and memory: tiles of one shape run as one forward (`batch`); between GroupNorms the tiles
wait on the compute device while they fit an allowance (`keep_bytes`, from the planner's memory budget) and
in pinned host memory past it (`offload`), which is what lets a large image fit. (On an H200, a 4096x4096
decode whose tiles all waited in pageable host memory took 118 s, for well under a second of arithmetic.)

Hand-written: diffusers' own `enable_tiling` blends independently normalised tiles (the seams above), and no
library implements the shared-statistics scheme. Works on our diffusers `AutoencoderKL` (model/vae.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from model.errors import InvalidInputError
from model.vae import VAE

ENCODER_PAD = 32  # image px around each encoder tile (upstream's "magic number")
DECODER_PAD = 11  # latent px around each decoder tile

Box = tuple[int, int, int, int]  # (x0, x1, y0, y1), upstream's order


@dataclass(frozen=True)
class Tile:
    input_box: Box  # in input units (image px for the encoder, latent px for the decoder)
    output_box: Box  # in output units


def best_tile_size(lower: int, upper: int) -> int:
    """`lower` rounded up to a multiple of 32, else 16, 8, 4, 2: the first that stays <= `upper`."""
    divider = 32
    while divider >= 2:
        if lower % divider == 0:
            return lower
        candidate = lower - lower % divider + divider
        if candidate <= upper:
            return candidate
        divider //= 2
    return lower


def split_tiles(height: int, width: int, tile: int, pad: int, to_output: Callable[[int], int]) -> list[Tile]:
    """Upstream's tile layout, row-major; `to_output` maps input to output px (x8 decoding, //8 encoding)."""
    rows = max(1, math.ceil((height - 2 * pad) / tile))
    cols = max(1, math.ceil((width - 2 * pad) / tile))
    tile_h = best_tile_size(math.ceil((height - 2 * pad) / rows), tile)
    tile_w = best_tile_size(math.ceil((width - 2 * pad) / cols), tile)

    tiles = []
    for i in range(rows):
        for j in range(cols):
            x0, x1 = pad + j * tile_w, min(pad + (j + 1) * tile_w, width)
            y0, y1 = pad + i * tile_h, min(pad + (i + 1) * tile_h, height)
            output = (
                x0 if x0 > pad else 0,
                x1 if x1 < width - pad else width,
                y0 if y0 > pad else 0,
                y1 if y1 < height - pad else height,
            )
            tiles.append(
                Tile(
                    input_box=(
                        max(0, x0 - pad),
                        min(width, x1 + pad),
                        max(0, y0 - pad),
                        min(height, y1 + pad),
                    ),
                    output_box=(
                        to_output(output[0]),
                        to_output(output[1]),
                        to_output(output[2]),
                        to_output(output[3]),
                    ),
                )
            )
    return tiles


# ---- the networks as a flat list of operations, GroupNorms kept apart ------------------------------------


@dataclass(frozen=True)
class _Op:
    """One step of a tile's program: `norm` (a GroupNorm, statistics shared across tiles), `fn` (per tile),
    `save` (keep fn(h) as the skip), `add` (h = (h + skip) * factor)."""

    kind: Literal["norm", "fn", "save", "add"]
    fn: Callable[[torch.Tensor], torch.Tensor] | nn.GroupNorm | None = None
    factor: float = 1.0


def _resnet_ops(block: nn.Module) -> list[_Op]:
    shortcut = block.conv_shortcut if block.conv_shortcut is not None else _identity
    return [
        _Op("save", shortcut),
        _Op("norm", block.norm1),
        _Op("fn", block.nonlinearity),
        _Op("fn", block.conv1),
        _Op("norm", block.norm2),
        _Op("fn", block.nonlinearity),
        _Op("fn", block.conv2),  # dropout is the identity at inference
        _Op("add", factor=1.0 / block.output_scale_factor),
    ]


def _attention_ops(attn: nn.Module) -> list[_Op]:
    if attn.spatial_norm is not None or attn.norm_q is not None or not attn.residual_connection:
        raise InvalidInputError(
            "tiled VAE: unsupported attention block (spatial norm, qk norm or no residual)"
        )
    return [
        _Op("save", _identity),
        _Op("norm", attn.group_norm),
        _Op("fn", lambda h: _attention(attn, h)),
        _Op("add", factor=1.0 / attn.rescale_output_factor),
    ]


def _mid_ops(mid: nn.Module) -> list[_Op]:
    ops = _resnet_ops(mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            ops += _attention_ops(attn)
        ops += _resnet_ops(resnet)
    return ops


def _tail_ops(net: nn.Module) -> list[_Op]:
    return [_Op("norm", net.conv_norm_out), _Op("fn", net.conv_act), _Op("fn", net.conv_out)]


def encoder_ops(encoder: nn.Module) -> list[_Op]:
    """diffusers `Encoder.forward`, unrolled."""
    ops = [_Op("fn", encoder.conv_in)]
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            ops += _resnet_ops(resnet)
        for down in block.downsamplers or ():
            ops.append(_Op("fn", down))
    return ops + _mid_ops(encoder.mid_block) + _tail_ops(encoder)


def decoder_ops(decoder: nn.Module) -> list[_Op]:
    """diffusers `Decoder.forward` (no latent embeddings), unrolled."""
    ops = [_Op("fn", decoder.conv_in), *_mid_ops(decoder.mid_block)]
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            ops += _resnet_ops(resnet)
        for up in block.upsamplers or ():
            ops.append(_Op("fn", up))
    return ops + _tail_ops(decoder)


def _identity(h: torch.Tensor) -> torch.Tensor:
    return h


def _attention(attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """diffusers' `AttnProcessor2_0` after its group norm: self-attention over the tile's own pixels."""
    b, c, height, width = h.shape
    x = h.reshape(b, c, height * width).transpose(1, 2)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
    return out.transpose(-1, -2).reshape(b, c, height, width)


# ---- execution ---------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Tiles of one input shape that run as one forward: their crops stacked on the batch axis, tile-major
    (rows `i * B .. i * B + B - 1` are tile `members[i]`)."""

    members: list[int]
    h: torch.Tensor
    skip: torch.Tensor | None = None
    kept: int | None = None  # bytes it holds while waiting on the compute device (None: it waits elsewhere)

    @property
    def nbytes(self) -> int:
        skip = 0 if self.skip is None else self.skip.nbytes
        return self.h.nbytes + skip

    def move(self, device: torch.device) -> None:
        self.h = _move(self.h, device)
        self.skip = None if self.skip is None else _move(self.skip, device)


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy `t` to `device`; a CUDA tensor parks in pinned host memory with an asynchronous copy (pageable
    copies run several times slower, and this moves gigabytes per GroupNorm on a large image). The copies
    queue on the current stream, so the way back never overtakes the way out."""
    if t.device == device:
        return t
    if t.is_cuda and device.type == "cpu":
        parked = torch.empty_like(t, device="cpu", pin_memory=True)  # keeps channels_last strides
        return parked.copy_(t, non_blocking=True)
    return t.to(device, non_blocking=t.is_pinned())


def _chunks(x: torch.Tensor, tiles: Sequence[Tile], batch: int) -> list[_Chunk]:
    """Tiles grouped by input shape (first-seen order), at most `batch` a chunk."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, tile in enumerate(tiles):
        x0, x1, y0, y1 = tile.input_box
        groups.setdefault((y1 - y0, x1 - x0), []).append(k)
    chunks = []
    for members in groups.values():
        for i in range(0, len(members), batch):
            part = members[i : i + batch]
            crops = [_crop(x, tiles[k].input_box) for k in part]
            chunks.append(_Chunk(part, crops[0] if len(crops) == 1 else torch.cat(crops)))
    return chunks


@dataclass
class _Parking:
    """Where chunks wait between GroupNorms: on the compute device while their bytes stay within
    `keep_bytes`, the rest at `offload`."""

    device: torch.device
    offload: torch.device
    keep_bytes: int | None  # None: no limit
    on_device: int = 0
    offloaded: bool = False  # some chunk went to `offload`

    def take(self, chunk: _Chunk) -> None:
        """Bring `chunk` to the compute device to run."""
        if chunk.kept is not None:
            self.on_device -= chunk.kept
            chunk.kept = None
        else:
            chunk.move(self.device)

    def park(self, chunk: _Chunk) -> None:
        """Leave `chunk` on the device if it fits the allowance, else send it to `offload`."""
        size = chunk.nbytes
        if self.offload == self.device or self.keep_bytes is None or self.on_device + size <= self.keep_bytes:
            self.on_device += size
            chunk.kept = size
        else:
            chunk.move(self.offload)
            self.offloaded = True

    def release(self) -> None:
        """After the run: hand the pinned host blocks back, so a worker does not keep gigabytes of
        unswappable memory after one large image (the next large image pins its blocks again).
        torch has no public call for this; without the private one the blocks stay cached."""
        if not (self.offloaded and self.device.type == "cuda"):
            return
        torch.cuda.current_stream(self.device).synchronize()  # the copies back are done with the blocks
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
        if empty_host_cache is not None:
            empty_host_cache()


def _group_stats(h: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased per-(sample, group) variance and mean, in float32 (fp16 variances can overflow)."""
    return torch.var_mean(h.float().reshape(h.shape[0], groups, -1), dim=2, unbiased=False)


def _shared_norm(norm: nn.GroupNorm, h: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    b, c = h.shape[:2]
    x = h.float().reshape(b, norm.num_groups, -1)
    x = ((x - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)).reshape(h.shape)
    if norm.affine:
        x = x * norm.weight.float().view(1, c, 1, 1) + norm.bias.float().view(1, c, 1, 1)
    return x.to(h.dtype)


def _run_op(op: _Op, state: _Chunk) -> None:
    if op.kind == "fn":
        state.h = op.fn(state.h)  # type: ignore[misc]
    elif op.kind == "save":
        state.skip = op.fn(state.h)  # type: ignore[misc]
    elif op.kind == "add":
        assert state.skip is not None
        state.h = (state.h + state.skip) * op.factor if op.factor != 1.0 else state.h + state.skip
        state.skip = None
    else:
        raise AssertionError(op.kind)


@torch.no_grad()
def run_tiled(
    ops: Sequence[_Op],
    x: torch.Tensor,
    tiles: Sequence[Tile],
    to_output: Callable[[int], int],
    offload: torch.device | str | None = None,
    *,
    batch: int = 1,
    keep_bytes: int | None = 0,
) -> torch.Tensor:
    """Run `ops` on every tile of `x` [B,C,H,W], sharing GroupNorm statistics, and paste each tile's valid
    core into a float32 result.

    `batch`: tiles of one shape per forward (fewer, larger kernels). `offload`: where tiles wait between
    GroupNorms when they do not fit `keep_bytes` on the compute device (None: where `x` is; `keep_bytes`
    None: no limit). Results do not depend on either, up to float rounding.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"tiles per forward must be a positive integer, got {batch!r}")
    device = x.device
    rows = x.shape[0]
    parking = _Parking(device, torch.device(offload) if offload is not None else device, keep_bytes)
    chunks = _chunks(x, tiles, batch)
    for chunk in chunks:
        parking.park(chunk)
    segments = _segments(ops)
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pixels: dict[int, int] = {}
    for n, segment in enumerate(segments):
        first = segment[0]
        shared = None
        if first.kind == "norm":  # in tile order, as one tile at a time would combine them
            shared = _combine([stats[k] for k in sorted(stats)], [pixels[k] for k in sorted(pixels)])
        next_norm = segments[n + 1][0].fn if n + 1 < len(segments) else None
        stats, pixels = {}, {}
        for chunk in chunks:
            parking.take(chunk)
            for op in segment:
                if op is first and shared is not None:
                    mean, var = (s.repeat(len(chunk.members), 1) for s in shared)
                    chunk.h = _shared_norm(op.fn, chunk.h, mean, var)  # type: ignore[arg-type]
                else:
                    _run_op(op, chunk)
            if isinstance(next_norm, nn.GroupNorm):
                var, mean = _group_stats(chunk.h, next_norm.num_groups)
                for i, k in enumerate(chunk.members):
                    rows_of_tile = slice(i * rows, (i + 1) * rows)
                    stats[k] = (var[rows_of_tile], mean[rows_of_tile])
                    pixels[k] = chunk.h.shape[-2] * chunk.h.shape[-1]
            parking.park(chunk)
    height, width = to_output(x.shape[-2]), to_output(x.shape[-1])
    out: torch.Tensor | None = None
    for chunk in chunks:
        parking.take(chunk)
        h = chunk.h
        if out is None:
            out = torch.zeros((rows, h.shape[1], height, width), dtype=torch.float32, device=device)
        for i, k in enumerate(chunk.members):
            x0, x1, y0, y1 = tiles[k].output_box
            ix, iy = to_output(tiles[k].input_box[0]), to_output(tiles[k].input_box[2])
            core = h[i * rows : (i + 1) * rows, :, y0 - iy : y1 - iy, x0 - ix : x1 - ix]
            out[..., y0:y1, x0:x1] = core.float()
        chunk.h = h[:0]  # pasted: free it
    parking.release()
    assert out is not None
    return out


def _crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    x0, x1, y0, y1 = box
    return x[..., y0:y1, x0:x1]


def _segments(ops: Sequence[_Op]) -> list[list[_Op]]:
    """Split the program before every GroupNorm: the points where all tiles must meet."""
    segments: list[list[_Op]] = [[]]
    for op in ops:
        if op.kind == "norm":
            segments.append([])
        segments[-1].append(op)
    return [s for s in segments if s]


def _combine(
    stats: list[tuple[torch.Tensor, torch.Tensor]], pixels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var): pixel-weighted means of the tiles' per-group means and variances (upstream's rule, with no
    between-tile variance term)."""
    largest = max(pixels)
    w = torch.tensor([p / largest for p in pixels], dtype=torch.float32, device=stats[0][0].device)
    w = (w / w.sum()).view(-1, 1, 1)
    var = torch.stack([v for v, _ in stats])
    mean = torch.stack([m for _, m in stats])
    return (mean * w).sum(dim=0), (var * w).sum(dim=0)


# ---- public API on our VAE ---------------------------------------------------------------------------------


def _default_offload(device: torch.device) -> torch.device | None:
    return torch.device("cpu") if device.type != "cpu" else None


def _needs_tiles(height: int, width: int, tile: int, pad: int) -> bool:
    return max(height, width) > 2 * pad + tile


def _run_stage(
    module: nn.Module,
    ops_of: Callable[[nn.Module], list[_Op]],
    x: torch.Tensor,
    tile: int,
    pad: int,
    scale: Callable[[int], int],
    offload: torch.device | str | None,
    dtype: torch.dtype,
    batch: int,
    keep_bytes: int | None,
) -> torch.Tensor:
    """The encoder's or decoder's forward: whole when `x` fits one padded tile, else tiled by `run_tiled`."""
    h, w = x.shape[-2:]
    if not _needs_tiles(h, w, tile, pad):
        return module(x)
    tiles = split_tiles(h, w, tile, pad, scale)
    offload = offload if offload is not None else _default_offload(x.device)
    return run_tiled(ops_of(module), x, tiles, scale, offload, batch=batch, keep_bytes=keep_bytes).to(dtype)


def encoder_tiled_gn(
    vae: VAE,
    img: torch.Tensor,
    tile: int,
    offload: torch.device | str | None = None,
    *,
    batch: int = 1,
    keep_bytes: int | None = 0,
) -> torch.Tensor:
    """The raw encoder output (2 x latent channels, before quant_conv) of `img` [B,3,H,W] in [-1,1], tiled
    with `tile`-px cores; `batch`, `keep_bytes`: see `run_tiled` (`offload` defaults to host memory for a
    GPU)."""
    _check_tile(tile)
    d = vae.downscale
    if img.ndim != 4 or img.shape[1] != 3 or img.shape[-2] % d or img.shape[-1] % d:
        raise InvalidInputError(f"encode_tiled_gn: expected an image [B,3,H,W] with H, W multiples of {d}")
    img = img.to(vae.dtype)
    encoder = vae.autoencoder.encoder
    return _run_stage(
        encoder, encoder_ops, img, tile, ENCODER_PAD, lambda v: v // d, offload, vae.dtype, batch, keep_bytes
    )


def posterior_tiled_gn(
    vae: VAE,
    img: torch.Tensor,
    tile: int,
    offload: torch.device | str | None = None,
    *,
    batch: int = 1,
    keep_bytes: int | None = 0,
) -> DiagonalGaussianDistribution:
    """`VAE.posterior`, tiled (see `encoder_tiled_gn`)."""
    moments = encoder_tiled_gn(vae, img, tile, offload, batch=batch, keep_bytes=keep_bytes)
    quant_conv = vae.autoencoder.quant_conv
    return DiagonalGaussianDistribution(quant_conv(moments) if quant_conv is not None else moments)


def encode_tiled_gn(
    vae: VAE,
    img: torch.Tensor,
    tile: int,
    sample: bool = False,
    generator: torch.Generator | None = None,
    offload: torch.device | str | None = None,
    *,
    batch: int = 1,
    keep_bytes: int | None = 0,
) -> torch.Tensor:
    """`VAE.encode`, tiled: scaled latent (posterior mode unless `sample`)."""
    posterior = posterior_tiled_gn(vae, img, tile, offload, batch=batch, keep_bytes=keep_bytes)
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    return z * vae.scale_factor


def decode_tiled_gn(
    vae: VAE,
    z: torch.Tensor,
    tile: int,
    offload: torch.device | str | None = None,
    *,
    batch: int = 1,
    keep_bytes: int | None = 0,
) -> torch.Tensor:
    """`VAE.decode`, tiled with `tile`-latent-px cores: scaled latent [B,4,h,w] -> image [B,3,8h,8w];
    `batch`, `keep_bytes`: see `run_tiled`."""
    _check_tile(tile)
    if z.ndim != 4:
        raise InvalidInputError(f"decode_tiled_gn: expected a latent [B,C,h,w], got {tuple(z.shape)}")
    ae = vae.autoencoder
    z = z.to(vae.dtype) / vae.scale_factor
    if ae.post_quant_conv is not None:
        z = ae.post_quant_conv(z)
    d = vae.downscale
    return _run_stage(
        ae.decoder, decoder_ops, z, tile, DECODER_PAD, lambda v: v * d, offload, vae.dtype, batch, keep_bytes
    )


def _check_tile(tile: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise InvalidInputError(f"tile size must be a positive integer, got {tile!r}")
