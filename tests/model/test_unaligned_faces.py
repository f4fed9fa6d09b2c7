"""The unaligned_face task through `DiffBIRPipeline` (tiny preset, CPU) with an injected detector: the result
is the sr restoration of the photo with the face task's restoration of each aligned crop blended in."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import imageops
from model.errors import CanceledError, InvalidInputError
from model.faces.alignment import FFHQ_TEMPLATE_512, align_face
from model.faces.blending import RestoredFace, paste_faces
from model.faces.detection import CenteredFaceDetector, Face
from model.faces.unaligned import FACE_STAGE, TINY_FACE_SIZE, FaceTools
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline

IMAGE = (np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8)
OPTIONS = RestoreOptions(task="unaligned_face", upscale=2.0, steps=2, seed=7, cfg_scale=4.0)
OUT_HW = (80, 96)
# A face in the upscaled photo: the template at 1/10 scale, turned a little, off centre.
LANDMARKS = FFHQ_TEMPLATE_512 @ np.array([[0.098, 0.017], [-0.017, 0.098]]) + (30.0, 14.0)


class FixedDetector:
    """Reports the given faces and remembers what it was shown."""

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.seen: list[np.ndarray] = []

    def detect(self, image: np.ndarray) -> list[Face]:
        self.seen.append(image)
        return self.faces


@pytest.fixture(scope="module")
def pipe() -> Iterator[DiffBIRPipeline]:
    yield DiffBIRPipeline.from_preset(
        "tiny", "v2.1", device="cpu", precision="fp32", tasks=["unaligned_face"], max_pixels=None
    )


def with_detector(pipe: DiffBIRPipeline, detector: FixedDetector) -> DiffBIRPipeline:
    pipe.faces = FaceTools(detector, None, TINY_FACE_SIZE)
    return pipe


@pytest.mark.slow
def test_faces_restored_as_faces_and_blended_into_the_sr_background(pipe: DiffBIRPipeline) -> None:
    detector = FixedDetector([Face((20, 10, 70, 60), 0.99, LANDMARKS)])
    stages: list[str] = []
    result = with_detector(pipe, detector).restore(IMAGE, OPTIONS, progress=lambda s, i, n: stages.append(s))

    upscaled = imageops.resize_uint8_bicubic_pil(IMAGE[None], OUT_HW)[0]
    # Faces are searched for on the photo upscaled to the output size.
    assert len(detector.seen) == 1 and np.array_equal(detector.seen[0], upscaled)
    assert result.faces == 1 and result.seed == 7 and result.image.shape == (*OUT_HW, 3)
    # The same two restorations, run on their own, blended by hand:
    background = pipe.restore(IMAGE, dataclasses.replace(OPTIONS, task="sr")).image
    aligned = align_face(upscaled, LANDMARKS, TINY_FACE_SIZE)
    face = pipe.restore(aligned.crop, dataclasses.replace(OPTIONS, task="face", upscale=1.0)).image
    expected = paste_faces(background, [RestoredFace(face, aligned.affine)])
    np.testing.assert_array_equal(result.image, expected)
    assert not np.array_equal(result.image, background)
    assert stages[0] == FACE_STAGE and stages[-1] == FACE_STAGE and "sampler" in stages
    assert set(result.timings) >= {"stage1", "sampler", "vae_decode", FACE_STAGE, "total"}


def test_no_face_gives_the_sr_restoration(pipe: DiffBIRPipeline) -> None:
    """Upstream's behaviour: with no face found only the background is restored."""
    options = dataclasses.replace(OPTIONS, steps=1, seed=3)
    result = with_detector(pipe, FixedDetector([])).restore(IMAGE, options)
    assert result.faces == 0
    background = pipe.restore(IMAGE, dataclasses.replace(options, task="sr")).image
    np.testing.assert_array_equal(result.image, background)


def test_a_canceled_unaligned_job_raises(pipe: DiffBIRPipeline) -> None:
    detector = FixedDetector([Face((20, 10, 70, 60), 0.99, LANDMARKS)])
    with pytest.raises(CanceledError):
        with_detector(pipe, detector).restore(IMAGE, OPTIONS, should_cancel=lambda: True)


def test_bad_input_is_reported_for_that_image_only(pipe: DiffBIRPipeline) -> None:
    with_detector(pipe, FixedDetector([]))
    bad, good = np.zeros((0, 4, 3), np.uint8), IMAGE
    options = dataclasses.replace(OPTIONS, steps=1)
    results = pipe.restore_batch([bad, good], [options, options])
    assert isinstance(results[0], InvalidInputError)
    assert not isinstance(results[1], Exception) and results[1].image.shape == (*OUT_HW, 3)


def test_tiny_preset_uses_the_centred_stand_in_detector() -> None:
    pipe = DiffBIRPipeline.from_preset("tiny", "v2", device="cpu", precision="fp32")
    assert pipe.tasks == ("sr", "face", "denoise", "unaligned_face")
    assert pipe.faces is not None and isinstance(pipe.faces.detector, CenteredFaceDetector)
    (face,) = pipe.faces.detector.detect(np.zeros((80, 120, 3), np.uint8))
    aligned = align_face(np.zeros((80, 120, 3), np.uint8), face.landmarks, 64)
    # The stand-in's face fills half the short side, centred: its crop is that square, scaled to 64 px.
    np.testing.assert_allclose(aligned.affine[:, :2], np.eye(2) * 64 / 40, atol=1e-4)
    np.testing.assert_allclose(aligned.affine[:, 2], [-40 * 64 / 40, -20 * 64 / 40], atol=1e-3)


def test_v1_has_no_unaligned_face() -> None:
    pipe = DiffBIRPipeline.from_preset("tiny", "v1", device="cpu", precision="fp32")
    assert "unaligned_face" not in pipe.tasks and pipe.faces is None
    with pytest.raises(InvalidInputError, match="not loaded"):
        pipe.restore(IMAGE, OPTIONS)
    with pytest.raises(InvalidInputError, match="not available with v1"):
        DiffBIRPipeline.from_preset("tiny", "v1", device="cpu", precision="fp32", tasks=["unaligned_face"])


@pytest.mark.slow
def test_cli_restores_an_unaligned_photo_at_the_official_upscale(tmp_path: Path) -> None:
    """`python -m model restore --task unaligned_face` (tiny preset): upstream's README upscale of 2."""
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(IMAGE).save(src)
    flags = [
        "--task",
        "unaligned_face",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--version",
        "v2",
        "--steps",
        "1",
        "--seed",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "model", "restore", str(src), "-o", str(dst), *flags],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(dst).size == (96, 80)
