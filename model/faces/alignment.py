"""Warping faces to the FFHQ template and back (what facexlib's `FaceRestoreHelper.align_warp_face` and
`get_inverse_affine` do, with the same OpenCV calls).

The helper itself is not used: its constructor downloads both of its nets when they are absent and has no
way to take a detector of ours, and its paste-back is not the one upstream DiffBIR runs (see `blending`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.errors import ModelError

# Five landmarks of an FFHQ-aligned 512 x 512 face (facexlib's FaceRestoreHelper, used by DiffBIR):
# left eye, right eye, nose tip, left and right mouth corners.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
FACE_SIZE = 512
# The fill of pixels outside the photo, from FaceRestoreHelper (a neutral grey).
BORDER_VALUE = (135, 133, 132)


def face_template(face_size: int = FACE_SIZE) -> np.ndarray:
    """The template's landmarks for a `face_size` square crop."""
    return FFHQ_TEMPLATE_512 * (face_size / FACE_SIZE)


@dataclass(frozen=True)
class AlignedFace:
    """A face crop and the 2x3 affine map that took photo pixels to crop pixels."""

    crop: np.ndarray  # face_size x face_size x 3 uint8
    affine: np.ndarray  # float64 [2, 3], photo -> crop

    @property
    def inverse(self) -> np.ndarray:
        """crop -> photo."""
        return cv2.invertAffineTransform(self.affine)


def similarity_to_template(landmarks: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, shift) that best maps `landmarks` [5, 2] onto the
    template, robustly (LMEDS, as facexlib: it matches skimage's estimate)."""
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, dtype=np.float64), face_template(face_size), method=cv2.LMEDS
    )
    if matrix is None:
        raise ModelError(f"no similarity transform fits the landmarks {np.round(landmarks, 1).tolist()}")
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, face_size: int = FACE_SIZE) -> AlignedFace:
    """The face with these landmarks, cropped from the H x W x 3 uint8 `image` and warped to the template."""
    affine = similarity_to_template(landmarks, face_size)
    crop = cv2.warpAffine(
        image, affine, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE
    )
    return AlignedFace(crop=crop, affine=affine)
