"""The image formats the service accepts and produces: one vocabulary for uploads, results and blob keys."""

from __future__ import annotations

from typing import Literal, get_args

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
# The IANA media types happen to be image/<name> for all three.
CONTENT_TYPES: dict[str, str] = {fmt: f"image/{fmt}" for fmt in IMAGE_FORMATS}
