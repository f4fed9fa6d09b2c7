"""Pasting restored faces back into the restored background with soft masks, as upstream DiffBIR's
`FaceRestoreHelper.paste_faces_to_input_image` does at upscale 1 (its own copy, not facexlib's: DiffBIR
always builds the square soft mask and, with a face parser, takes the smaller of the two masks).

Per face: warp the crop back with the inverse of its alignment; warp a square of ones the same way and erode
it 2 px (no black rim from the warp); erode it again by a tenth of the face's side and blur it over the same
width, so the face fades into the background; blend. Faces are blended one after another in float and the
result is converted to uint8 once, as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RIM_PX = 2  # upstream: int(2 * upscale_factor) at upscale 1
INTER_AREA = cv2.INTER_AREA  # upstream warps the parse mask with flags=3


@dataclass(frozen=True)
class RestoredFace:
    """A restored aligned crop, the alignment it came from (photo -> crop), and its parse mask if any."""

    crop: np.ndarray  # S x S x 3 uint8
    affine: np.ndarray  # [2, 3]
    parse_mask: np.ndarray | None = None  # S x S float in [0, 1]


def _erode(mask: np.ndarray, size: int) -> np.ndarray:
    # OpenCV reads an empty kernel as its default 3x3; a zero size here means "no erosion".
    return cv2.erode(mask, np.ones((size, size), np.uint8)) if size > 0 else mask


def footprint(face_size: int, inverse: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Where the square crop lands in the photo (float32 H x W, 1 inside), less a 2 px rim."""
    h, w = out_hw
    return _erode(cv2.warpAffine(np.ones((face_size, face_size), np.float32), inverse, (w, h)), RIM_PX)


def soft_mask(inside: np.ndarray) -> np.ndarray:
    """A footprint with a soft edge as wide as a tenth of the face's side; float32 in [0, 1]."""
    edge = int(float(inside.sum()) ** 0.5) // 20
    return cv2.GaussianBlur(_erode(inside, 2 * edge), (2 * edge + 1, 2 * edge + 1), 0)


def paste_faces(background: np.ndarray, faces: list[RestoredFace]) -> np.ndarray:
    """`background` (H x W x 3 uint8, the restored photo) with each face blended in; uint8."""
    h, w = background.shape[:2]
    out = background.astype(np.float64)
    for face in faces:
        size = face.crop.shape[0]
        inverse = cv2.invertAffineTransform(face.affine)
        warped = cv2.warpAffine(face.crop, inverse, (w, h)).astype(np.float64)
        inside = footprint(size, inverse, (h, w))
        mask = soft_mask(inside)
        if face.parse_mask is not None:
            region = cv2.warpAffine(face.parse_mask.astype(np.float32), inverse, (w, h), flags=INTER_AREA)
            mask = np.minimum(mask, region)
        alpha = mask[..., None].astype(np.float64)
        out = alpha * (inside[..., None] * warped) + (1 - alpha) * out
    # Rounded where upstream truncates: truncation turns the blur's float residue far from a face (alpha of
    # about 1e-7) into background pixels one level darker.
    return np.rint(out).clip(0, 255).astype(np.uint8)
