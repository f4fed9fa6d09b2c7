"""Colour correction of the diffusion output against the stage-1 image.

The diffusion prior restores texture but may drift in colour; the reference keeps the generated HIGH
frequencies and takes the LOW frequencies (colour, shading) from the stage-1 image (`wavelet_reconstruction`).
AdaIN (matching per-channel mean/std, as in StableSR) is the cheaper alternative. Both are a few lines of
tensor maths with no library equivalent, so they are written out here to match the reference exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.errors import InvalidInputError

WAVELET_LEVELS = 5
# 3x3 binomial ("a trous") kernel of the reference's wavelet blur.
_BLUR_KERNEL = ((0.0625, 0.125, 0.0625), (0.125, 0.25, 0.125), (0.0625, 0.125, 0.0625))


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-channel 3x3 binomial blur dilated by `radius`, with replicate padding."""
    channels = image.shape[1]
    kernel = torch.tensor(_BLUR_KERNEL, dtype=image.dtype, device=image.device)[None, None]
    kernel = kernel.repeat(channels, 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(
    image: torch.Tensor, levels: int = WAVELET_LEVELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequencies: `levels` blurs with radius 1, 2, 4, ...; high is the sum of the residuals."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_reconstruction(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """High frequencies of `content` (generated image) + low frequencies of `style` (stage-1 image)."""
    _check_pair(content, style, same_size=True)
    content_high, _ = wavelet_decomposition(content)
    _, style_low = wavelet_decomposition(style)
    return content_high + style_low


def _mean_std(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return flat.mean(dim=2).view(b, c, 1, 1), (flat.var(dim=2) + eps).sqrt().view(b, c, 1, 1)


def adain_color_fix(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give `content` the per-channel mean and std of `style` (adaptive instance normalisation)."""
    _check_pair(content, style, same_size=False)
    content_mean, content_std = _mean_std(content, eps)
    style_mean, style_std = _mean_std(style, eps)
    return (content - content_mean) / content_std * style_std + style_mean


def _check_pair(content: torch.Tensor, style: torch.Tensor, same_size: bool) -> None:
    if content.ndim != 4 or style.ndim != 4:
        raise InvalidInputError(
            f"expected [B,C,H,W] tensors, got {tuple(content.shape)} and {tuple(style.shape)}"
        )
    if content.shape[:2] != style.shape[:2] or (same_size and content.shape != style.shape):
        raise InvalidInputError(f"content {tuple(content.shape)} and style {tuple(style.shape)} do not match")


_FIXES = {"wavelet": wavelet_reconstruction, "adain": adain_color_fix}
# The public `color_fix` vocabulary ("none" keeps the decoded colours).
COLOR_FIXES: tuple[str, ...] = (*_FIXES, "none")


def apply_color_fix(method: str, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """`method` in `COLOR_FIXES` (the public `color_fix` option)."""
    if method == "none":
        return content
    if method not in _FIXES:
        raise InvalidInputError(f"unknown color_fix {method!r}; expected one of {list(COLOR_FIXES)}")
    return _FIXES[method](content, style)
