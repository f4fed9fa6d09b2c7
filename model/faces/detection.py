"""Face detection with five landmarks: facexlib's RetinaFace (ResNet-50), loaded from our weights directory.

facexlib's own `init_detection_model` downloads `detection_Resnet50_Final.pth` from GitHub when it is absent;
here the file comes from the weights registry (`python -m model download`) and is loaded strictly, so a
worker never reaches the network. The settings are those of upstream DiffBIR's unaligned loop:
`get_face_landmarks_5(resize=640, eye_dist_threshold=5)` with facexlib's score threshold of 0.97.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from model.checkpoints import fill_batchnorm_counters, load_state_dict, load_strict

CONF_THRESHOLD = 0.97  # FaceRestoreHelper.get_face_landmarks_5
DETECT_SHORT_EDGE = 640  # upstream's resize=640: detect on a copy whose short side is 640 px
MIN_EYE_DISTANCE = 5.0  # upstream's eye_dist_threshold: drops side views and specks


@dataclass(frozen=True)
class Face:
    """One detected face in image pixels: box (x0, y0, x1, y1), score, and the five landmarks (x, y) in
    RetinaFace's order: left eye, right eye, nose, left mouth corner, right mouth corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # float64 [5, 2]

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))


class FaceDetector(Protocol):
    """What the unaligned-face task needs from a detector (tests inject their own)."""

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an H x W x 3 uint8 RGB image."""
        ...


def build_retinaface(device: torch.device | str = "cpu") -> torch.nn.Module:
    """facexlib's RetinaFace-ResNet50 network with untrained weights, in eval mode (`load_retinaface` fills
    it)."""
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():  # facexlib still passes torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return RetinaFace(network_name="resnet50", half=False, device=torch.device(device)).eval()


def load_retinaface(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The detector from an official `detection_Resnet50_Final.pth` (a `module.`-prefixed file loads too,
    as facexlib strips that prefix), strictly: a file that does not fit names the keys that differ."""
    net = build_retinaface("cpu")
    sd = fill_batchnorm_counters(net, load_state_dict(path))
    load_strict(net, sd, "RetinaFace-ResNet50 (detection_Resnet50_Final.pth)")
    net.device = torch.device(device)  # facexlib builds its input tensors on `net.device`
    net.mean_tensor = net.mean_tensor.to(device)
    return net.to(device).eval().requires_grad_(False)


class RetinaFaceDetector:
    """`FaceDetector` over facexlib's RetinaFace, with upstream DiffBIR's settings."""

    def __init__(
        self,
        net: torch.nn.Module,
        conf_threshold: float = CONF_THRESHOLD,
        detect_short_edge: int = DETECT_SHORT_EDGE,
        min_eye_distance: float = MIN_EYE_DISTANCE,
    ) -> None:
        self.net = net
        self.conf_threshold = conf_threshold
        self.detect_short_edge = detect_short_edge
        self.min_eye_distance = min_eye_distance

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> RetinaFaceDetector:
        return cls(load_retinaface(path, device))

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        scale = min(h, w) / self.detect_short_edge
        small = cv2.resize(image, (int(w / scale), int(h / scale)), interpolation=cv2.INTER_LANCZOS4)
        # facexlib's RetinaFace takes OpenCV's BGR order (it subtracts the BGR means 104, 117, 123). Upstream
        # DiffBIR hands it RGB; we give it the order it was trained on.
        rows = self.net.detect_faces(np.ascontiguousarray(small[..., ::-1]), self.conf_threshold)
        faces = []
        for row in np.asarray(rows, dtype=np.float64):  # x0 y0 x1 y1 score, then 5 (x, y) landmarks
            box = row[:4] * scale
            face = Face(
                box=(box[0], box[1], box[2], box[3]),
                score=float(row[4]),
                landmarks=row[5:15].reshape(5, 2) * scale,
            )
            if face.eye_distance >= self.min_eye_distance:
                faces.append(face)
        return faces


class CenteredFaceDetector:
    """The tiny preset's detector: one face in the middle of every image, its landmarks on the FFHQ template
    scaled to half the short side. It finds nothing; it lets smoke runs (random weights, CPU) exercise the
    whole unaligned-face path -- crop, two restorations, blend -- without a detector's weights."""

    def detect(self, image: np.ndarray) -> list[Face]:
        from model.faces.alignment import FFHQ_TEMPLATE_512

        h, w = image.shape[:2]
        size = min(h, w) / 2
        x0, y0 = (w - size) / 2, (h - size) / 2
        landmarks = FFHQ_TEMPLATE_512 * (size / 512) + (x0, y0)
        return [Face(box=(x0, y0, x0 + size, y0 + size), score=1.0, landmarks=landmarks)]
