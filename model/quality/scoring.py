"""One object that scores a restored image: BasicSR PSNR/SSIM here, the learned metrics through pyiqa."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.quality import metrics
from model.quality.vocab import OWN_METRICS


class Scorer:
    def __init__(
        self,
        names: Sequence[str],
        device: str | torch.device = "cpu",
        weights_dir: Path | None = None,
        allow_download: bool = False,
        crop_border: int = 0,
    ) -> None:
        self.own = [n for n in names if n in OWN_METRICS]
        self.crop_border = crop_border
        learned = [n for n in names if n not in OWN_METRICS]
        self.learned = None
        self.skipped: dict[str, str] = {}
        if learned:
            from model.quality.learned import LearnedMetrics

            self.learned = LearnedMetrics(learned, device, weights_dir, allow_download)
            self.skipped = dict(self.learned.skipped)

    @property
    def active(self) -> list[str]:
        names = list(self.own)
        if self.learned is not None:
            names += list(self.learned.metrics)
        return names

    def score(self, image: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
        """Metrics of `image`; full-reference ones only with a `reference` (cut to the common size)."""
        out: dict[str, float] = {}
        if reference is not None:
            image_c, ref_c = metrics.common_crop(image, reference)
            for name in self.own:
                y = name.endswith("_y")
                fn = metrics.ssim if name.startswith("ssim") else metrics.psnr
                out[name] = fn(image_c, ref_c, self.crop_border, y_channel=y)
        else:
            image_c, ref_c = image, None
        if self.learned is not None:
            out.update(self.learned.score(image_c, ref_c))
        return out

    def fid(self, folder: Path, reference_folder: Path) -> float | None:
        return self.learned.fid(folder, reference_folder) if self.learned is not None else None
