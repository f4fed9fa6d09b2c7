"""The `unaligned_face` task on a pipeline, as upstream DiffBIR's `UnAlignedBFRInferenceLoop` runs it:

1. upscale the photo to the output size (Pillow bicubic) and find the faces on it (five landmarks each);
2. warp each face to the 512 FFHQ template and restore the crops with the `face` task (upscale 1);
3. restore the whole photo with the `sr` task at the requested upscale (the background);
4. blend each restored face back into the background with its soft mask (`blending`).

No face found: the result is the background alone, as upstream (which then restores only the background).
The faces and the background share the request's seed and options; every face crop has the same size, so
they run as one stage-2 batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import imageops, weights
from model.faces.alignment import FACE_SIZE, align_face
from model.faces.blending import RestoredFace, paste_faces
from model.faces.detection import CenteredFaceDetector, Face, FaceDetector, RetinaFaceDetector
from model.faces.parsing import FaceParser
from model.inputs import output_size, prepare_image
from model.options import STAGES, CancelFn, ProgressFn, RestoreOptions, RestoreResult, random_seed
from model.weights import UNALIGNED_FACE

log = logging.getLogger(__name__)

# At most this many faces are restored per photo (the largest, by eye distance): each costs a full stage-2
# run at 512 x 512, and a crowd photo must not hold a GPU for an unbounded time.
MAX_FACES = 20
TINY_FACE_SIZE = 64  # the tiny nets' smallest diffusion size (model/planning.py TINY_MIN_SHORT_EDGE)
FACE_STAGE = "faces"  # progress stage and timing key of detection, alignment, parsing and blending

RestoreBatch = Callable[
    [Sequence[np.ndarray], Sequence[RestoreOptions], Sequence[ProgressFn | None], Sequence[CancelFn | None]],
    list[RestoreResult | Exception],
]


@dataclass(frozen=True)
class FaceTools:
    """What the task needs besides the face and sr models: a detector, optionally a parser (soft masks follow
    the face region; without it the square soft mask alone), and the aligned crop's size."""

    detector: FaceDetector
    parser: FaceParser | None = None
    face_size: int = FACE_SIZE


def largest_faces(faces: list[Face], limit: int = MAX_FACES) -> list[Face]:
    if len(faces) <= limit:
        return faces
    log.warning("%d faces found; restoring the %d largest", len(faces), limit)
    return sorted(faces, key=lambda f: f.eye_distance, reverse=True)[:limit]


def restore_unaligned(
    restore_batch: RestoreBatch,
    tools: FaceTools,
    image: np.ndarray,
    options: RestoreOptions,
    max_pixels: int | None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> RestoreResult:
    """Restore a photo with unaligned faces; `restore_batch` is the pipeline's (it runs the face and sr
    tasks). Raises the first failure of any part (bad input, canceled, out of memory)."""
    started = time.perf_counter()
    report = progress or (lambda stage, step, total: None)
    seed = options.seed if options.seed is not None else random_seed()
    prep = prepare_image(image, max_pixels)
    out_hw = output_size(*prep.size, options.upscale, max_pixels)

    report(FACE_STAGE, 0, 2)
    t0 = time.perf_counter()
    upscaled = imageops.resize_uint8_bicubic_pil(prep.image[None], out_hw)[0]
    faces = largest_faces(tools.detector.detect(upscaled))
    aligned = [align_face(upscaled, f.landmarks, tools.face_size) for f in faces]
    face_seconds = time.perf_counter() - t0
    log.info("unaligned_face: %d face(s) in a %dx%d photo", len(faces), out_hw[1], out_hw[0])
    report(FACE_STAGE, 1, 2)

    face_options = dataclasses.replace(options, task="face", upscale=1.0, seed=seed)
    background_options = dataclasses.replace(options, task="sr", seed=seed)
    images = [a.crop for a in aligned] + [prep.image]
    n = len(images)
    # Progress from one face (the faces share a batch, so they report the same steps) and the background;
    # every part polls the cancel hook, as a batch stops only when all its items are canceled.
    progresses = [progress if i in (0, n - 1) else None for i in range(n)]
    results = restore_batch(
        images, [face_options] * len(aligned) + [background_options], progresses, [should_cancel] * n
    )
    for r in results:
        if isinstance(r, Exception):
            raise r
    restored = [r for r in results if isinstance(r, RestoreResult)]

    t0 = time.perf_counter()
    pasted = [
        RestoredFace(
            crop=r.image,
            affine=a.affine,
            parse_mask=tools.parser.mask(r.image) if tools.parser is not None else None,
        )
        for r, a in zip(restored[:-1], aligned, strict=True)
    ]
    final = paste_faces(restored[-1].image, pasted)
    face_seconds += time.perf_counter() - t0
    report(FACE_STAGE, 2, 2)

    timings = {name: sum(r.timings.get(name, 0.0) for r in restored) for name in STAGES}
    timings[FACE_STAGE] = face_seconds
    timings["total"] = time.perf_counter() - started
    return RestoreResult(
        image=final,
        timings=timings,
        peak_memory_bytes=max((r.peak_memory_bytes or 0 for r in restored), default=0) or None,
        seed=seed,
        sampler_steps=options.steps,
        conversions=list(prep.conversions),
        faces=len(faces),
    )


def load_face_tools(
    preset: str,
    version: str,
    weights_dir: str | Path | None,
    device: torch.device | str = "cpu",
    *,
    small: bool = False,
) -> FaceTools:
    """The detector and parser of `version`'s unaligned_face task. `full`: the registry's files from
    `weights_dir` (`python -m model download` fetches them; nothing is downloaded here). `tiny`: the
    centred stand-in detector and no parser -- plumbing only, like the tiny nets. `small` (tiny nets)
    aligns to a 64 px template instead of 512, so CPU smoke runs stay quick."""
    face_size = TINY_FACE_SIZE if small else FACE_SIZE
    if preset == "tiny":
        weights.required(version, UNALIGNED_FACE)  # v1 refuses the task, as upstream does
        return FaceTools(CenteredFaceDetector(), None, face_size)
    files = weights.required(version, UNALIGNED_FACE)
    names = [files["face_detector"].name, files["face_parser"].name]
    paths = weights.resolve_names(names, weights_dir, version=version)
    return FaceTools(
        RetinaFaceDetector.from_file(paths[names[0]], device),
        FaceParser.from_file(paths[names[1]], device),
        face_size,
    )
