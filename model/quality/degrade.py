"""Synthetic degradations (HQ -> LQ) for measuring restoration against a known ground truth.

Presets:
- `bicubic`: plain x`scale` bicubic downsampling (Pillow: Keys a = -0.5, antialiased, as MATLAB imresize).
- `diffbir`: the paper's first-order model (§3.1; the official stage-1 training config): blur (isotropic or
  anisotropic Gaussian, sigma 0.1..12, 41x41), bilinear downsampling by a random factor 1..12, Gaussian noise
  sigma 0..15, JPEG quality 30..100, then bilinear resize to the LQ size (HQ size / `scale`; `--scale 1` gives
  the training-time layout, LQ at HQ size).
- `realesrgan`: the second-order model of Real-ESRGAN with the official stage-2 training config of DiffBIR
  (blur with Gaussian / generalized / plateau / sinc kernels, random up/down/keep resize with area, bilinear
  or bicubic, Gaussian or Poisson noise (colour or gray), JPEG; twice; then resize to HQ/`scale` and a final
  sinc filter around the last JPEG, in random order).

Every random draw comes from one `numpy.random.Generator` seeded from (base seed, file name), so an image's LQ
is the same whatever else is in the folder, and the drawn parameters are returned for the JSON beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.quality import kernels
from model.quality.images import list_images, read_rgb, write_png

Steps = list[dict[str, Any]]
RESIZE_MODES = ("area", "bilinear", "bicubic")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as torchvision's rgb_to_grayscale


def image_seed(base_seed: int, name: str) -> int:
    """A 63-bit seed from the base seed and the file name: per image, independent of the folder's contents."""
    digest = hashlib.sha256(f"{base_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ---- operations on [1, 3, H, W] float32 tensors in [0, 1] -------------------------------------------------


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Rounded (not truncated): a degradation has no reference rounding to match."""
    return (x[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def blur(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Per-channel 2-D filtering, reflected borders (replicated when the image is smaller than the kernel)."""
    k = kernel.shape[0]
    p = k // 2
    mode = "reflect" if p < min(x.shape[-2:]) else "replicate"
    weight = torch.from_numpy(kernel.astype(np.float32))[None, None].expand(x.shape[1], 1, k, k)
    return F.conv2d(F.pad(x, (p, p, p, p), mode=mode), weight, groups=x.shape[1])


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def gaussian_noise(x: torch.Tensor, sigma: float, gray: bool, rng: np.random.Generator) -> torch.Tensor:
    """Additive white noise, `sigma` on the 0..255 scale; gray noise is the same in all three channels."""
    _, c, h, w = x.shape
    noise = rng.standard_normal((1 if gray else c, h, w)).astype(np.float32) * (sigma / 255.0)
    return (x + torch.from_numpy(noise)[None]).clamp(0, 1)


def poisson_noise(x: torch.Tensor, scale: float, gray: bool, rng: np.random.Generator) -> torch.Tensor:
    """Shot noise: the image (or its luma) as Poisson counts at 2^ceil(log2(#levels)) levels, scaled."""
    base = x
    if gray:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        base = (x * weights).sum(dim=1, keepdim=True)
    arr = base.numpy().astype(np.float64)
    levels = len(np.unique(np.round(arr * 255.0)))
    levels = 2 ** math.ceil(math.log2(max(levels, 2)))
    noisy = rng.poisson(np.clip(arr, 0, None) * levels) / levels
    noise = torch.from_numpy((noisy - arr).astype(np.float32))
    return (x + noise * scale).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A real JPEG round trip through Pillow (libjpeg, 4:2:0) at `quality` (1..100)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return to_tensor(np.asarray(img.convert("RGB")))


# ---- presets ----------------------------------------------------------------------------------------------


class Preset(Protocol):
    name: str

    def apply(self, hq: np.ndarray, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, Steps]:
        """LQ uint8 image (HQ size // scale) and the parameters drawn, in the order applied."""
        ...


@dataclass(frozen=True)
class Bicubic:
    name: str = "bicubic"

    def apply(self, hq: np.ndarray, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, Steps]:
        h, w = hq.shape[0] // scale, hq.shape[1] // scale
        lq = np.asarray(Image.fromarray(hq).resize((w, h), Image.Resampling.BICUBIC))
        return lq, [{"op": "resize", "mode": "bicubic_pil", "size": [h, w]}]


DIFFBIR_KERNEL = kernels.KernelSpec(
    kinds=("iso", "aniso"), probs=(0.5, 0.5), sigma=(0.1, 12.0), size=41, random_size=False
)


@dataclass(frozen=True)
class FirstOrder:
    """The DiffBIR paper's degradation (official `general_deg_codeformer` stage-1 training config)."""

    name: str = "diffbir"
    kernel: kernels.KernelSpec = DIFFBIR_KERNEL
    downsample: tuple[float, float] = (1.0, 12.0)
    noise: tuple[float, float] = (0.0, 15.0)
    jpeg: tuple[int, int] = (30, 100)

    def apply(self, hq: np.ndarray, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, Steps]:
        h, w = hq.shape[:2]
        x = to_tensor(hq)
        kernel, params = kernels.random_kernel(rng, self.kernel)
        x = blur(x, kernel)
        steps: Steps = [{"op": "blur", **params}]
        factor = float(rng.uniform(*self.downsample))
        size = (int(h // factor), int(w // factor))
        x = resize(x, size, "bilinear")
        steps.append({"op": "resize", "mode": "bilinear", "factor": factor, "size": list(x.shape[-2:])})
        sigma = float(rng.uniform(*self.noise))
        x = gaussian_noise(x, sigma, False, rng)
        steps.append({"op": "noise", "type": "gaussian", "sigma": sigma, "gray": False})
        quality = int(rng.uniform(*self.jpeg))
        x = jpeg(x, quality)
        steps.append({"op": "jpeg", "quality": quality})
        x = resize(x, (h // scale, w // scale), "bilinear")
        steps.append({"op": "resize", "mode": "bilinear", "size": list(x.shape[-2:])})
        return to_uint8(x), steps


@dataclass(frozen=True)
class Order:
    """One pass of the second-order model."""

    kernel: kernels.KernelSpec
    blur_prob: float
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[int, int]


def _random_resize(
    x: torch.Tensor, order: Order, rng: np.random.Generator, base: tuple[int, int]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Up, down or keep by a random factor of `base` (H, W), with a random interpolation."""
    direction = str(rng.choice(["up", "down", "keep"], p=order.resize_prob))
    lo, hi = order.resize_range
    factor = float(
        rng.uniform(1, hi) if direction == "up" else rng.uniform(lo, 1) if direction == "down" else 1
    )
    mode = str(rng.choice(RESIZE_MODES))
    x = resize(x, (int(base[0] * factor), int(base[1] * factor)), mode)
    return x, {
        "op": "resize",
        "direction": direction,
        "factor": factor,
        "mode": mode,
        "size": list(x.shape[-2:]),
    }


def _random_noise(
    x: torch.Tensor, order: Order, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    gray = bool(rng.uniform() < order.gray_noise_prob)
    if rng.uniform() < order.gaussian_noise_prob:
        sigma = float(rng.uniform(*order.noise_range))
        return gaussian_noise(x, sigma, gray, rng), {
            "op": "noise",
            "type": "gaussian",
            "sigma": sigma,
            "gray": gray,
        }
    scale = float(rng.uniform(*order.poisson_range))
    return poisson_noise(x, scale, gray, rng), {
        "op": "noise",
        "type": "poisson",
        "scale": scale,
        "gray": gray,
    }


def _random_jpeg(
    x: torch.Tensor, order: Order, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    quality = round(rng.uniform(*order.jpeg_range))
    return jpeg(x, quality), {"op": "jpeg", "quality": quality}


_REALESRGAN_KINDS = kernels.KERNEL_KINDS
_REALESRGAN_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


@dataclass(frozen=True)
class SecondOrder:
    """Real-ESRGAN's model, parameters as DiffBIR's official `general_deg_realesrgan` training config."""

    name: str = "realesrgan"
    first: Order = Order(
        kernel=kernels.KernelSpec(_REALESRGAN_KINDS, _REALESRGAN_PROBS, sigma=(0.2, 3.0), sinc_prob=0.1),
        blur_prob=1.0,
        resize_prob=(0.2, 0.7, 0.1),
        resize_range=(0.15, 1.5),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 30.0),
        poisson_range=(0.05, 3.0),
        gray_noise_prob=0.4,
        jpeg_range=(30, 95),
    )
    second: Order = Order(
        kernel=kernels.KernelSpec(_REALESRGAN_KINDS, _REALESRGAN_PROBS, sigma=(0.2, 1.5), sinc_prob=0.1),
        blur_prob=0.8,
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_noise_prob=0.5,
        noise_range=(1.0, 25.0),
        poisson_range=(0.05, 2.5),
        gray_noise_prob=0.4,
        jpeg_range=(30, 95),
    )
    final_sinc_prob: float = 0.8

    def apply(self, hq: np.ndarray, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, Steps]:
        h, w = hq.shape[:2]
        x = to_tensor(hq)
        steps: Steps = []
        for i, order in enumerate((self.first, self.second)):
            # Draw the kernel even when blur is skipped, so the later draws do not depend on that coin.
            kernel, params = kernels.random_kernel(rng, order.kernel)
            if rng.uniform() < order.blur_prob:
                x = blur(x, kernel)
                steps.append({"op": "blur", **params})
            # The first pass resizes relative to the image, the second relative to the final LQ size.
            base = (x.shape[-2], x.shape[-1]) if i == 0 else (h / scale, w / scale)
            x, params = _random_resize(x, order, rng, base)
            steps.append(params)
            x, params = _random_noise(x, order, rng)
            steps.append(params)
            if i == 0:
                x, params = _random_jpeg(x, order, rng)
                steps.append(params)
        x, final = self._final(x, (h // scale, w // scale), rng)
        return to_uint8(x), steps + final

    def _final(
        self, x: torch.Tensor, size: tuple[int, int], rng: np.random.Generator
    ) -> tuple[torch.Tensor, Steps]:
        """Resize to the LQ size + sinc filter, and JPEG: in random order (both orders occur in real data)."""
        mode = str(rng.choice(RESIZE_MODES))
        sinc_kernel: np.ndarray | None = None
        sinc_params: dict[str, Any] = {"op": "sinc", "applied": False}
        if rng.uniform() < self.final_sinc_prob:
            k = int(rng.choice(np.arange(7, 22, 2)))
            cutoff = float(rng.uniform(math.pi / 3, math.pi))
            sinc_kernel = kernels.sinc(k, cutoff, pad_to=21)
            sinc_params = {"op": "sinc", "applied": True, "size": k, "cutoff": cutoff}
        quality = round(rng.uniform(*self.second.jpeg_range))

        def resize_sinc(x: torch.Tensor) -> torch.Tensor:
            x = resize(x, size, mode)
            return blur(x, sinc_kernel) if sinc_kernel is not None else x

        resize_step = {"op": "resize", "mode": mode, "size": list(size)}
        jpeg_step = {"op": "jpeg", "quality": quality}
        if rng.uniform() < 0.5:
            return jpeg(resize_sinc(x), quality), [resize_step, sinc_params, jpeg_step]
        return resize_sinc(jpeg(x, quality)), [jpeg_step, resize_step, sinc_params]


PRESETS: dict[str, Callable[[], Preset]] = {
    "bicubic": Bicubic,
    "diffbir": FirstOrder,
    "realesrgan": SecondOrder,
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def degrade_image(hq: np.ndarray, preset: Preset, scale: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """LQ image and its record: HQ cropped to a multiple of `scale` first, so HQ = LQ x scale exactly."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = (hq.shape[0] // scale) * scale, (hq.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise ValueError(f"image {hq.shape[1]}x{hq.shape[0]} is smaller than the scale {scale}")
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        lq, steps = preset.apply(np.ascontiguousarray(hq[:h, :w]), scale, rng)
    record = {
        "preset": preset.name,
        "seed": seed,
        "scale": scale,
        "hq_size": [int(hq.shape[0]), int(hq.shape[1])],
        "hq_crop": [h, w],
        "lq_size": [int(lq.shape[0]), int(lq.shape[1])],
        "steps": steps,
        "preset_config": dataclasses.asdict(preset),
    }
    return lq, record


def degrade_folder(hq_dir: Path, lq_dir: Path, preset_name: str, base_seed: int, scale: int) -> list[Path]:
    """Degrade every image of `hq_dir` into `lq_dir` as `<stem>.png` + `<stem>.json` (the parameters)."""
    preset = get_preset(preset_name)
    written = []
    for path in list_images(hq_dir):
        seed = image_seed(base_seed, path.name)
        lq, record = degrade_image(read_rgb(path), preset, scale, seed)
        record = {"source": path.name, "base_seed": base_seed, **record}
        out = write_png(lq_dir / f"{path.stem}.png", lq)
        (lq_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        written.append(out)
    return written
