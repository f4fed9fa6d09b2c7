"""Stage-1 restoration nets (SwinIR, BSRNet, SCUNet) in the official DiffBIR key layouts.

SwinIR and SCUNet come from spandrel, with two small subclasses that make them match the reference exactly:
- `DiffBIRSwinIR` moves spandrel's functional pixel-unshuffle into `conv_first = Sequential(PixelUnshuffle,
  Conv)`, so the state dict has DiffBIR's `conv_first.1.*` keys and official files load strictly as they are.
- `DiffBIRSCUNet` pads with REPLICATION to multiples of 64 as the original SCUNet does (spandrel reflects,
  which changes the output of any size that is not a multiple of 64).
BSRNet is written out here (`RRDBNet`): spandrel's RRDBNet fixes the dense-block growth channels at 32 and
keeps its weights under the old ESRGAN `model.N.*` names, so it can neither build other configs nor load
`BSRNet.pth` keys directly. The module below is KAIR's RRDBNet (BSRGAN) with the same keys as `BSRNet.pth`.

`Stage1Net` adds the pipeline's input handling (SwinIR: zero-pad to multiples of 64, run, crop back).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from spandrel.architectures.SCUNet import SCUNet
from spandrel.architectures.SwinIR import SwinIR
from spandrel.architectures.SwinIR.__arch.SwinIR import SwinTransformerBlock
from torch import nn

from model.checkpoints import load_state_dict, load_strict
from model.errors import InvalidInputError
from model.imageops import crop, pad_to_multiple
from model.tiling import tiled_apply

Stage1Kind = Literal["swinir", "bsrnet", "scunet"]
KINDS: tuple[str, ...] = ("swinir", "bsrnet", "scunet")

# Output size / input size of each net (SwinIR's x8 upsampler undoes its 1/8 pixel-unshuffle).
STAGE1_SCALE: dict[str, int] = {"swinir": 1, "bsrnet": 4, "scunet": 1}

# The reference pipeline zero-pads SwinIR inputs to this multiple before the forward.
SWINIR_PAD_MULTIPLE = 64
# SCUNet replication-pads to this multiple inside its own forward.
SCUNET_PAD_MULTIPLE = 64

# Configs in the reference's parameter names (DiffBIR configs/inference/*.yaml). `full` are the official nets;
# `tiny` are the reference fixtures' random-weight nets (tiny_configs.json and the fixtures' meta).
STAGE1_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "swinir": {
            "img_size": 64,
            "patch_size": 1,
            "in_chans": 3,
            "embed_dim": 180,
            "depths": [6] * 8,
            "num_heads": [6] * 8,
            "window_size": 8,
            "mlp_ratio": 2,
            "sf": 8,
            "img_range": 1.0,
            "upsampler": "nearest+conv",
            "resi_connection": "1conv",
            "unshuffle": True,
            "unshuffle_scale": 8,
        },
        "bsrnet": {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32, "sf": 4},
        "scunet": {"in_nc": 3, "config": [4, 4, 4, 4, 4, 4, 4], "dim": 64},
    },
    "tiny": {
        "swinir": {
            "img_size": 64,
            "patch_size": 1,
            "in_chans": 3,
            "embed_dim": 24,
            "depths": [2, 2],
            "num_heads": [2, 2],
            "window_size": 8,
            "mlp_ratio": 2,
            "sf": 8,
            "img_range": 1.0,
            "upsampler": "nearest+conv",
            "resi_connection": "1conv",
            "unshuffle": True,
            "unshuffle_scale": 8,
        },
        "bsrnet": {"in_nc": 3, "out_nc": 3, "nf": 16, "nb": 2, "gc": 8, "sf": 4},
        "scunet": {"in_nc": 3, "config": [0, 1, 2, 0, 0, 1, 0], "dim": 32},
    },
}


def stage1_config(preset: str, kind: str) -> dict[str, Any]:
    """A deep copy of `STAGE1_CONFIGS[preset][kind]` (so callers cannot edit the table)."""
    if preset not in STAGE1_CONFIGS:
        raise InvalidInputError(f"unknown preset {preset!r}; expected one of {sorted(STAGE1_CONFIGS)}")
    _check_kind(kind)
    return copy.deepcopy(STAGE1_CONFIGS[preset][kind])


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidInputError(f"unknown stage-1 net {kind!r}; expected one of {list(KINDS)}")


# ------------------------------------------------------------------------------------------------------------
# Architectures


# Shifted-window masks for feature sizes other than img_size, shared by all blocks (same values for the same
# size, window, shift, device and dtype). Small: a 2048 px image needs two masks of 16 MiB.
_MASK_CACHE: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
_MASK_CACHE_SIZE = 8
_MASK_LOCK = threading.Lock()


class _SwinBlock(SwinTransformerBlock):
    """spandrel's Swin block, building the attention mask for a new feature size once, in the block's dtype.

    spandrel rebuilds that mask on the CPU, in float32, in every block at every forward whenever the feature
    size differs from `img_size` (always, in practice). In fp16/bf16 the float32 mask also promotes the
    attention scores to float32 and the next matmul fails. The values (-100 / 0) are the reference's.
    """

    def calculate_mask(self, x_size: tuple[int, int]) -> torch.Tensor:
        p = self.norm1.weight
        key = (int(x_size[0]), int(x_size[1]), self.window_size, self.shift_size, p.device, p.dtype)
        with _MASK_LOCK:
            mask = _MASK_CACHE.get(key)
            if mask is not None:
                _MASK_CACHE.move_to_end(key)
                return mask
        mask = super().calculate_mask(x_size).to(device=p.device, dtype=p.dtype)
        with _MASK_LOCK:
            _MASK_CACHE[key] = mask
            while len(_MASK_CACHE) > _MASK_CACHE_SIZE:
                _MASK_CACHE.popitem(last=False)
        return mask


class DiffBIRSwinIR(SwinIR):
    """spandrel's SwinIR with the pixel-unshuffle inside `conv_first` (DiffBIR's module and key layout)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.start_unshuffle > 1:
            self.conv_first = nn.Sequential(nn.PixelUnshuffle(self.start_unshuffle), self.conv_first)
            self.start_unshuffle = 1  # spandrel's forward must not unshuffle a second time
        for module in self.modules():
            if type(module) is SwinTransformerBlock:
                module.__class__ = _SwinBlock  # same state, cached mask (spandrel builds the blocks itself)


class DiffBIRSCUNet(SCUNet):
    """spandrel's SCUNet padding like the original SCUNet: replication, bottom/right, to multiples of 64."""

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(x, SCUNET_PAD_MULTIPLE, mode="replicate")[0]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, then `out * 0.2 + x`."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BSRNet (KAIR/BSRGAN RRDBNet): RRDB trunk, then nearest x2 + conv + LeakyReLU(0.2) once per factor 2."""

    def __init__(
        self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, sf: int = 4
    ) -> None:
        super().__init__()
        if sf not in (2, 4):
            raise InvalidInputError(f"BSRNet supports sf 2 or 4, got {sf}")
        self.sf = sf
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        if sf == 4:
            self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        fea = self.lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
        if self.sf == 4:
            fea = self.lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.HRconv(fea)))


def _swinir_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """DiffBIR's swinir.yaml parameters -> spandrel SwinIR keyword arguments."""
    return {
        "img_size": cfg["img_size"],
        "patch_size": cfg.get("patch_size", 1),
        "in_chans": cfg.get("in_chans", 3),
        "embed_dim": cfg["embed_dim"],
        "depths": list(cfg["depths"]),
        "num_heads": list(cfg["num_heads"]),
        "window_size": cfg["window_size"],
        "mlp_ratio": cfg["mlp_ratio"],
        "upscale": cfg["sf"],
        "img_range": cfg.get("img_range", 1.0),
        "upsampler": cfg["upsampler"],
        "resi_connection": cfg.get("resi_connection", "1conv"),
        "start_unshuffle": cfg["unshuffle_scale"] if cfg.get("unshuffle", False) else 1,
        "drop_path_rate": 0.0,  # training-only; inference is identical for any rate
    }


def _build_net(kind: str, cfg: Mapping[str, Any]) -> nn.Module:
    if kind == "swinir":
        return DiffBIRSwinIR(**_swinir_kwargs(cfg))
    if kind == "bsrnet":
        return RRDBNet(**{k: cfg[k] for k in ("in_nc", "out_nc", "nf", "nb", "gc", "sf")})
    return DiffBIRSCUNet(
        in_nc=cfg.get("in_nc", 3),
        config=list(cfg["config"]),
        dim=cfg["dim"],
        drop_path_rate=0.0,
        input_resolution=cfg.get("input_resolution", 256),
    )


# Building on the meta device: spandrel computes its drop-path schedule with `.item()`, which meta tensors
# refuse, so `torch.device("meta")` alone cannot build these nets. Instead, build on CPU and move each
# parameter and buffer to meta as it is registered (what accelerate's `init_empty_weights` does; accelerate is
# not a dependency). The patch is process-wide while it lasts, hence the lock.
_EMPTY_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _register_on(device: torch.device) -> Iterator[None]:
    real_param, real_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        real_param(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to(device), requires_grad=param.requires_grad)

    def register_buffer(
        self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        real_buffer(self, name, tensor, persistent=persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to(device)

    with _EMPTY_INIT_LOCK:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = real_param  # type: ignore[method-assign]
            nn.Module.register_buffer = real_buffer  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------------------
# Wrapper and builders


class Stage1Net(nn.Module):
    """A stage-1 net plus the reference pipeline's input handling.

    `forward(img [B,3,H,W] in [0,1]) -> [B,3,H*scale,W*scale]`, NOT clamped (the pipeline clamps). The input
    is cast to the net's dtype and device; the output has the input's dtype. `net` holds the official key
    layout, so `load_strict(stage1.net, official_state_dict, ...)` works.
    """

    def __init__(self, kind: str, net: nn.Module) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self.scale = STAGE1_SCALE[kind]
        self.net = net

    def _param(self) -> torch.Tensor:
        return next(self.net.parameters())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise InvalidInputError(f"stage-1 input must be [B,3,H,W], got {tuple(img.shape)}")
        p = self._param()
        x = img.to(device=p.device, dtype=p.dtype)
        if self.kind == "swinir":
            h, w = x.shape[2:]
            x, _ = pad_to_multiple(x, SWINIR_PAD_MULTIPLE)
            y = crop(self.net(x), h, w)
        else:
            y = self.net(x)  # BSRNet needs no padding; SCUNet pads (replicate) and crops inside its forward
        return y.to(img.dtype)

    def forward_tiled(
        self, img: torch.Tensor, tile: int, stride: int, progress: Any = None, batch: int = 1
    ) -> torch.Tensor:
        """Gaussian-blended tiled forward (reference `make_tiled_fn`), `batch` windows per forward (the nets
        treat batch items independently); SwinIR tiles: multiples of 64."""
        if self.kind == "swinir" and tile % SWINIR_PAD_MULTIPLE != 0:
            raise InvalidInputError(f"SwinIR tile size must be a multiple of {SWINIR_PAD_MULTIPLE}: {tile}")
        return tiled_apply(self, img, tile, stride, scale=self.scale, progress=progress, batch=batch)


def build_stage1(
    kind: str,
    config: Mapping[str, Any] | None = None,
    *,
    preset: str = "full",
    device: torch.device | str | None = None,
) -> Stage1Net:
    """A stage-1 net with freshly initialised weights (`config` defaults to `STAGE1_CONFIGS[preset][kind]`).

    `device="meta"` (or building inside `with torch.device("meta"):`) gives a weightless skeleton quickly,
    to be filled with `load_strict(..., assign=True)`.
    """
    _check_kind(kind)
    cfg = dict(config) if config is not None else stage1_config(preset, kind)
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":
        with torch.device("cpu"), _register_on(target):
            net = _build_net(kind, cfg)
    elif device is not None:
        with torch.device(target):
            net = _build_net(kind, cfg)
    else:
        net = _build_net(kind, cfg)
    return Stage1Net(kind, net).eval()


def stage1_from_state_dict(
    kind: str,
    state_dict: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    *,
    preset: str = "full",
    what: str | None = None,
) -> Stage1Net:
    """Build the net on the meta device and load an official state dict into it strictly (no double init)."""
    model = build_stage1(kind, config, preset=preset, device="meta")
    load_strict(model.net, state_dict, what or f"{kind} stage-1 net", assign=True)
    _check_no_meta_tensors(model.net)
    return model.eval()


def load_stage1(
    kind: str, path: str | Path, config: Mapping[str, Any] | None = None, *, preset: str = "full"
) -> Stage1Net:
    """Stage-1 net from an official checkpoint file (`.pth/.ckpt/.safetensors`, reference unwrapping)."""
    return stage1_from_state_dict(kind, load_state_dict(path), config, preset=preset, what=f"{kind} ({path})")


def _check_no_meta_tensors(net: nn.Module) -> None:
    """Fail loudly if a meta tensor survived loading (a non-persistent buffer the checkpoint cannot hold).

    None of the three nets has one (SwinIR's `attn_mask` and `relative_position_index` are persistent and
    come from the checkpoint); this keeps a future one from reaching a forward as a meta tensor.
    """
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        if tensor.is_meta:
            raise InvalidInputError(f"{name} was not provided by the checkpoint and cannot be built on meta")


@functools.cache
def count_parameters(kind: str, preset: str = "full") -> int:
    """Number of parameters of a preset net (no buffers), computed on the meta device."""
    return sum(p.numel() for p in build_stage1(kind, preset=preset, device="meta").net.parameters())
