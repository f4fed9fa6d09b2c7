"""Unaligned faces: alignment and paste-back geometry on synthetic photos with known landmarks, the parse
mask recipe, and the facexlib nets loaded strictly from official-layout files (random weights)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.checkpoints import load_state_dict
from model.errors import CheckpointMismatchError
from model.faces.alignment import FFHQ_TEMPLATE_512, align_face, face_template
from model.faces.blending import RestoredFace, footprint, paste_faces, soft_mask
from model.faces.detection import Face, RetinaFaceDetector, build_retinaface, load_retinaface
from model.faces.parsing import BORDER_PX, FaceParser, build_parsenet
from model.faces.unaligned import MAX_FACES, largest_faces
from model.weights import REGISTRY

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """2x3 matrix: template (512 px) coordinates -> photo coordinates."""
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def smooth_photo(h: int, w: int) -> np.ndarray:
    """Low-frequency colour gradients: two bilinear resamplings change it by at most a few levels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 40 + 170 * x / w
    g = 40 + 170 * y / h
    b = 128 + 80 * np.sin(x / 37.0) * np.cos(y / 43.0)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def test_aligned_crop_puts_the_landmarks_on_the_template() -> None:
    to_photo = similarity(25.0, 0.35, (160.0, 90.0))
    landmarks = apply(to_photo, FFHQ_TEMPLATE_512)
    photo = np.full((400, 360, 3), 128, np.uint8)
    for (x, y), color in zip(landmarks, COLORS, strict=True):
        cv2.circle(photo, (round(x * 16), round(y * 16)), 4 * 16, color, -1, cv2.LINE_AA, shift=4)

    aligned = align_face(photo, landmarks, 512)

    assert aligned.crop.shape == (512, 512, 3) and aligned.crop.dtype == np.uint8
    # The estimated map is the exact inverse of the one that placed the face.
    composed = aligned.affine[:, :2] @ to_photo[:, :2]
    np.testing.assert_allclose(composed, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(apply(aligned.affine, landmarks), FFHQ_TEMPLATE_512, atol=1e-4)
    # And the pixels agree: each coloured dot's centre lands on its template point.
    crop = aligned.crop.astype(np.int32)
    for point, color in zip(FFHQ_TEMPLATE_512, COLORS, strict=True):
        ys, xs = np.nonzero(np.abs(crop - np.array(color)).sum(axis=-1) < 90)
        assert len(xs) > 50, color
        assert np.hypot(xs.mean() - point[0], ys.mean() - point[1]) < 1.0, (color, xs.mean(), ys.mean())


def test_face_template_scales_with_the_crop() -> None:
    np.testing.assert_allclose(face_template(64), FFHQ_TEMPLATE_512 / 8)


def test_paste_back_puts_the_crop_where_it_came_from() -> None:
    photo = smooth_photo(300, 340)
    background = 255 - photo  # differs from the photo everywhere
    landmarks = apply(similarity(-15.0, 0.4, (90.0, 60.0)), FFHQ_TEMPLATE_512)
    aligned = align_face(photo, landmarks, 512)

    out = paste_faces(background, [RestoredFace(aligned.crop, aligned.affine)])

    inside = footprint(512, aligned.inverse, (300, 340))
    alpha = soft_mask(inside)
    face_core, elsewhere = alpha > 0.999, inside == 0
    assert face_core.sum() > 0.5 * (512 * 0.4) ** 2
    for x, y in landmarks.round().astype(int):
        assert face_core[y, x]
    diff = np.abs(out.astype(int) - photo.astype(int))
    assert diff[face_core].max() <= 3
    np.testing.assert_array_equal(out[elsewhere], background[elsewhere])


def test_the_soft_mask_fades_over_a_tenth_of_the_face() -> None:
    size, scale = 512, 0.5
    crop_to_photo = similarity(0.0, scale, (40.0, 30.0))  # axis-aligned: x in [40, 296), y in [30, 286)
    inside = footprint(size, crop_to_photo, (320, 340))
    alpha = soft_mask(inside)
    row = alpha[30 + 128, 40 + 128 :]  # from the face's centre to the right edge of the photo
    assert row[0] == pytest.approx(1.0) and row[-1] == 0.0
    assert np.all(np.diff(row) <= 1e-6), "the mask only falls off from the centre outwards"
    edge = int(float(inside.sum()) ** 0.5) // 20
    ramp = np.count_nonzero((row > 0.01) & (row < 0.99))
    assert edge >= 10 and edge // 2 <= ramp <= 2 * edge + 1, (edge, ramp)
    assert alpha[30 + 128, 40 + 256 - 1] < 0.01, "no hard edge at the crop's border"


class _RegionNet(torch.nn.Module):
    """Stands in for ParseNet: 'skin' (class 1) inside a centred disc, background (class 0) outside."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.radius = radius
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x)
        n, _, h, w = x.shape
        y, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        disc = ((y - h / 2) ** 2 + (xx - w / 2) ** 2) < self.radius**2
        logits = torch.zeros(n, 19, h, w)
        logits[:, 1][:, disc] = 5.0
        logits[:, 0][:, ~disc] = 5.0
        return logits, x


def test_parse_mask_follows_the_face_region_and_limits_the_blend() -> None:
    net = _RegionNet(radius=150)
    parser = FaceParser(net)
    crop = smooth_photo(512, 512)
    mask = parser.mask(crop)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert mask[256, 256] == pytest.approx(1.0, abs=1e-3) and mask[60, 60] == pytest.approx(0.0, abs=1e-3)
    assert np.all(mask[:BORDER_PX] == 0) and np.all(mask[:, -BORDER_PX:] == 0)
    assert np.count_nonzero((mask > 0.05) & (mask < 0.95)) > 1000, "the region's edge is blurred"
    x = net.inputs[0]
    assert tuple(x.shape) == (1, 3, 512, 512) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # RGB order, as facexlib feeds the net: the red channel of the crop is the first input channel.
    np.testing.assert_allclose(x[0, 0].numpy(), crop[..., 0] / 255.0 * 2 - 1, atol=1e-6)

    photo = smooth_photo(300, 300)
    background = 255 - photo
    landmarks = apply(similarity(0.0, 0.5, (20.0, 20.0)), FFHQ_TEMPLATE_512)
    aligned = align_face(photo, landmarks, 512)
    out = paste_faces(background, [RestoredFace(aligned.crop, aligned.affine, mask)])
    # (y, x): the face's centre, and a point near the crop's corner, off the parsed disc
    centre, corner = (20 + 128, 20 + 128), (20 + 40, 20 + 40)
    assert abs(int(out[centre][0]) - int(photo[centre][0])) <= 3
    np.testing.assert_array_equal(out[corner], background[corner])


def test_largest_faces_keeps_the_biggest() -> None:
    faces = [Face((0, 0, 1, 1), 0.99, FFHQ_TEMPLATE_512 * (i + 1) / 512) for i in range(MAX_FACES + 3)]
    kept = largest_faces(faces)
    assert len(kept) == MAX_FACES
    assert min(f.eye_distance for f in kept) > max(f.eye_distance for f in faces[:3])
    assert largest_faces(faces[:2]) == faces[:2]


# --- the facexlib nets from official-layout files ------------------------------------------------------

# Key names and shapes of the released detection_Resnet50_Final.pth (RetinaFace, 2 anchors per cell): the
# class / box / landmark heads give 2x2, 2x4 and 2x10 channels; FPN width 256.
DETECTOR_KEYS = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
    "BboxHead.2.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.1.conv1x1.weight": (20, 256, 1, 1),
}
PARSER_KEYS = {"encoder.0.conv2d.weight": (64, 3, 3, 3), "out_mask_conv.conv2d.weight": (19, 64, 3, 3)}


def test_registry_has_the_files_facexlib_fetches() -> None:
    """Same URLs (hence file names) as facexlib's own loaders, so its release files are what we load."""
    import inspect

    from facexlib.detection import init_detection_model
    from facexlib.parsing import init_parsing_model

    assert f"'{REGISTRY['retinaface_resnet50'].url}'" in inspect.getsource(init_detection_model)
    assert f"'{REGISTRY['parsenet'].url}'" in inspect.getsource(init_parsing_model)


def test_retinaface_loads_strictly_from_the_official_layout(face_weight_files: Path) -> None:
    path = face_weight_files / "detection_Resnet50_Final.pth"
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in raw)  # DataParallel prefixes, and no BatchNorm counters
    assert not any(k.endswith("num_batches_tracked") for k in raw)
    for key, shape in DETECTOR_KEYS.items():
        assert tuple(raw[f"module.{key}"].shape) == shape, key

    net = load_retinaface(path)

    loaded = net.state_dict()
    stripped = load_state_dict(path)
    assert set(stripped) == {k for k in loaded if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(loaded[k], v) for k, v in stripped.items())
    assert len(loaded) == len(build_retinaface().state_dict())


def test_retinaface_file_with_a_missing_key_is_named(face_weight_files: Path, tmp_path: Path) -> None:
    raw = torch.load(face_weight_files / "detection_Resnet50_Final.pth", weights_only=True)
    del raw["module.LandmarkHead.1.conv1x1.weight"]
    torch.save(raw, tmp_path / "detection_Resnet50_Final.pth")
    with pytest.raises(CheckpointMismatchError, match=r"LandmarkHead\.1\.conv1x1\.weight"):
        load_retinaface(tmp_path / "detection_Resnet50_Final.pth")


def test_detector_reports_faces_in_photo_pixels(face_weight_files: Path) -> None:
    """The real RetinaFace (random weights, so a low threshold) on a photo detected at 160 px: boxes and
    landmarks come back in the photo's pixels, from the BGR copy facexlib's net expects."""
    net = load_retinaface(face_weight_files / "detection_Resnet50_Final.pth")
    detector = RetinaFaceDetector(net, conf_threshold=0.3, detect_short_edge=160, min_eye_distance=0.0)
    photo = smooth_photo(100, 150)

    faces = detector.detect(photo)

    small = cv2.resize(photo, (240, 160), interpolation=cv2.INTER_LANCZOS4)
    with torch.no_grad():
        raw = net.detect_faces(np.ascontiguousarray(small[..., ::-1]), 0.3)
    assert len(faces) == len(raw) > 0
    scale = 100 / 160
    for face, row in zip(faces, raw, strict=True):
        np.testing.assert_allclose(face.box, row[:4] * scale, rtol=1e-5)
        np.testing.assert_allclose(face.landmarks, row[5:15].reshape(5, 2) * scale, rtol=1e-5)
        assert face.score == pytest.approx(row[4])
    picky = RetinaFaceDetector(net, conf_threshold=0.3, detect_short_edge=160, min_eye_distance=1e6)
    assert picky.detect(photo) == []


def test_parsenet_loads_strictly_from_the_official_layout(face_weight_files: Path) -> None:
    path = face_weight_files / "parsing_parsenet.pth"
    raw = torch.load(path, weights_only=True)
    for key, shape in PARSER_KEYS.items():
        assert tuple(raw[key].shape) == shape, key
    parser = FaceParser.from_file(path)
    loaded = parser.net.state_dict()
    assert raw.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in raw.items())
    mask = parser.mask(smooth_photo(64, 64))
    assert mask.shape == (64, 64) and mask.min() >= 0.0 and mask.max() <= 1.0
    del raw["out_mask_conv.conv2d.bias"]
    torch.save(raw, path.parent / "broken_parsenet.pth")
    try:
        with pytest.raises(CheckpointMismatchError, match=r"out_mask_conv\.conv2d\.bias"):
            FaceParser.from_file(path.parent / "broken_parsenet.pth")
    finally:
        (path.parent / "broken_parsenet.pth").unlink()
    assert build_parsenet().state_dict().keys() == raw.keys() | {"out_mask_conv.conv2d.bias"}
