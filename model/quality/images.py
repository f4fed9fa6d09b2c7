"""Image folders for the quality tools: which files count as images, how they are read and written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (sub-folders and other files are ignored)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB, EXIF orientation applied (as the CLI and the service read uploads)."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB")).copy()


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def pair_by_stem(lq: list[Path], hq: list[Path]) -> list[tuple[Path, Path | None]]:
    """Each LQ file with the HQ file of the same stem (None when the HQ set has none)."""
    by_stem = {p.stem: p for p in hq}
    return [(p, by_stem.get(p.stem)) for p in lq]
