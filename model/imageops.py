"""Image tensor helpers with the reference pipeline's exact rounding, resizing and padding rules.

- uint8 -> float: `x / 255`, clamped to [0, 1]; float -> uint8: `(x * 255).clamp(0, 255).to(uint8)`, which
  TRUNCATES (the reference never rounds, and the golden uint8 outputs depend on it).
- Every resize is `F.interpolate(mode="bicubic", antialias=True)`; antialias changes values even upsampling.
- Padding for the networks is zeros at the bottom/right only, so cropping `[:h, :w]` undoes it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.errors import InvalidInputError


def _check_bchw(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise InvalidInputError(f"expected a [B,C,H,W] tensor, got shape {tuple(x.shape)}")


def uint8_to_tensor(
    image: np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """HxWx3 or BxHxWx3 uint8 RGB -> [B,3,H,W] float in [0, 1]."""
    if image.dtype != np.uint8:
        raise InvalidInputError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise InvalidInputError(f"expected an HxWx3 (or BxHxWx3) RGB image, got shape {image.shape}")
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only buffers
        image = image.copy()
    x = torch.from_numpy(image).to(device=device, dtype=torch.float32)
    return x.div(255).clamp(0, 1).permute(0, 3, 1, 2).contiguous().to(dtype)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] float in [0, 1] -> BxHxWx3 uint8, truncating like the reference's `.to(torch.uint8)`."""
    _check_bchw(x)
    out = (x.float() * 255.0).clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def resize_bicubic_aa(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing to `size` = (height, width), as every reference resize does."""
    _check_bchw(x)
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"resize target must be positive, got {size}")
    return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True)


def short_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) with the short edge at `size`; long edge truncated by int() as the reference."""
    if h == w:
        return size, size
    if h < w:
        return size, int(w * (size / h))
    return int(h * (size / w)), size


def resize_short_edge(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short edge is exactly `size` (reference `resize_short_edge_to`)."""
    _check_bchw(x)
    return resize_bicubic_aa(x, short_edge_size(x.shape[2], x.shape[3], size))


def ensure_min_short_edge(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """`resize_short_edge(x, min_size)` if the short edge is below `min_size`, else `x` unchanged."""
    _check_bchw(x)
    return resize_short_edge(x, min_size) if min(x.shape[2:]) < min_size else x


def pad_amounts(h: int, w: int, multiple: int) -> tuple[int, int]:
    """(pad_bottom, pad_right) that bring (h, w) up to multiples of `multiple`."""
    if multiple <= 0:
        raise InvalidInputError(f"multiple must be positive, got {multiple}")
    return (-h) % multiple, (-w) % multiple


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "constant", value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right to multiples of `multiple`; returns the padded tensor and (pad_bottom, pad_right).

    The default zero padding is the reference's `pad_to_multiples_of`; `mode` is passed to `F.pad`
    ("replicate", "reflect", ...). `crop(x, h, w)` undoes it.
    """
    _check_bchw(x)
    ph, pw = pad_amounts(x.shape[2], x.shape[3], multiple)
    if ph == 0 and pw == 0:
        return x, (0, 0)
    if mode == "constant":
        return F.pad(x, (0, pw, 0, ph), mode="constant", value=value), (ph, pw)
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


def crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Top-left `h` x `w` region (undoes bottom/right padding)."""
    return x[..., :h, :w]


def resize_uint8_bicubic_pil(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BxHxWx3 uint8 -> Bx`size`x3 uint8 with Pillow's bicubic, as the official inference loops upscale the
    low-quality input before a x1 stage-1 net (`lq.resize(..., Image.BICUBIC)`). Pillow's kernel (a=-0.5,
    rounded to uint8) differs from torch's bicubic (a=-0.75), so this is not `resize_bicubic_aa`."""
    from PIL import Image

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidInputError(f"expected BxHxWx3 uint8 images, got {images.dtype} {images.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"resize target must be positive, got {size}")
    resized = [np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC)) for img in images]
    return np.stack(resized)
