"""Names the quality tools understand (no heavy imports: the CLI parser reads them)."""

from __future__ import annotations

# Computed by model/quality/metrics.py (BasicSR definitions); `_y` = on the luma channel.
OWN_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")
# Our name -> pyiqa's. `pyiqa:<name>` passes any other pyiqa metric through (e.g. pyiqa:maniqa-pipal).
PYIQA_NAMES = {
    "lpips": "lpips",
    "niqe": "niqe",
    "musiq": "musiq",
    "maniqa": "maniqa",
    "clipiqa": "clipiqa",
    "fid": "fid",
}
PASSTHROUGH = "pyiqa:"
DEFAULT_METRICS = (*OWN_METRICS, *PYIQA_NAMES)
LOWER_IS_BETTER = frozenset({"lpips", "niqe", "fid"})

# Synthetic degradation presets (model/quality/degrade.py).
DEGRADATION_PRESETS = ("bicubic", "diffbir", "realesrgan")
