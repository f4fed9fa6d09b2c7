"""Check and normalise the array handed to `DiffBIRPipeline.restore` before any tensor is built.

Every refusal is an `InvalidInputError` naming what is wrong, so a bad upload never becomes a crash deep in
torch.
Accepted conversions (each reported in `PreparedImage.conversions`, so callers can show them):
- gray (H x W or H x W x 1) -> RGB by repeating the channel ("gray_to_rgb");
- gray+alpha / RGBA -> RGB by compositing on a WHITE background ("alpha_on_white"): transparent pixels
  become white, as most viewers show them, instead of the arbitrary colour stored under alpha 0;
- 16-bit (uint16) -> 8-bit by `round(v * 255 / 65535)` ("16bit_to_8bit"): linear, 0 -> 0 and 65535 -> 255.
Refused: float arrays (their range is ambiguous: [0,1] or [0,255]?), other integer types, empty images, and
images whose input or OUTPUT pixel count exceeds `max_pixels`. Sizes that are not multiples of 8 are fine:
the pipeline pads internally and crops back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.errors import InvalidInputError

MAX_UPSCALE = 16.0


@dataclass
class PreparedImage:
    image: np.ndarray  # H x W x 3 uint8, C-contiguous
    conversions: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def prepare_image(image: object, max_pixels: int | None = None) -> PreparedImage:
    """Validate `image` and convert it to H x W x 3 uint8 RGB (see module docstring for the rules)."""
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise InvalidInputError(f"image must be H x W or H x W x C, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4):
        raise InvalidInputError(f"image must have 1, 2, 3 or 4 channels, got {image.shape[2]}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"image is empty (shape {image.shape})")
    check_pixels(image.shape[0], image.shape[1], max_pixels, "input")

    conversions: list[str] = []
    pixels = _to_uint8(image, conversions)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels in (2, 4):
        pixels = _composite_on_white(pixels)
        conversions.append("alpha_on_white")
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
        conversions.append("gray_to_rgb")
    return PreparedImage(np.ascontiguousarray(pixels), conversions)


def _to_uint8(image: np.ndarray, conversions: list[str]) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        conversions.append("16bit_to_8bit")
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        raise InvalidInputError(
            f"float images are not accepted (dtype {image.dtype}): ambiguous range; pass uint8 or uint16"
        )
    raise InvalidInputError(f"unsupported image dtype {image.dtype}; pass uint8 or uint16")


def _composite_on_white(pixels: np.ndarray) -> np.ndarray:
    color, alpha = pixels[:, :, :-1].astype(np.float32), pixels[:, :, -1:].astype(np.float32) / 255.0
    out = color * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def check_pixels(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise InvalidInputError(
            f"{what} image is {width}x{height} = {height * width} pixels, over the limit of {max_pixels}"
        )


def output_size(height: int, width: int, upscale: float, max_pixels: int | None = None) -> tuple[int, int]:
    """(H, W) of the result for `upscale`; refuses factors outside [1, 16] and outputs over `max_pixels`."""
    factor = float(upscale)
    if not math.isfinite(factor) or not 1.0 <= factor <= MAX_UPSCALE:
        raise InvalidInputError(f"upscale must be in [1, {MAX_UPSCALE:g}], got {upscale!r}")
    out_h, out_w = max(1, round(height * factor)), max(1, round(width * factor))
    check_pixels(out_h, out_w, max_pixels, "output")
    return out_h, out_w
