"""Awkward inputs through `DiffBIRPipeline.restore` (tiny preset): every case gives a uint8 RGB image of the
right size, or an `InvalidInputError` before any tensor work -- never a crash deep in torch. Also checks that
no NaN/inf reaches the post-processing (uint8 conversion would hide it as black pixels)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.errors import InvalidInputError
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline


def _finite_postprocess(pipe: DiffBIRPipeline) -> DiffBIRPipeline:
    original = pipe.postprocess

    def checked(decoded: torch.Tensor, cond_img: torch.Tensor, *args: Any) -> torch.Tensor:
        assert torch.isfinite(decoded).all() and torch.isfinite(cond_img).all()
        return original(decoded, cond_img, *args)

    pipe.postprocess = checked  # type: ignore[method-assign]
    return pipe


@pytest.fixture(scope="module")
def v2() -> DiffBIRPipeline:
    return _finite_postprocess(
        DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp32")
    )


@pytest.fixture(scope="module")
def v21() -> DiffBIRPipeline:
    return _finite_postprocess(
        DiffBIRPipeline.from_preset("tiny", version="v2.1", device="cpu", precision="fp32")
    )


def _rgb(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image, options, size",
    [
        (_rgb(1, 1), {"task": "sr", "upscale": 4.0}, (4, 4)),
        (_rgb(1, 1), {"task": "face", "upscale": 1.0}, (1, 1)),
        (_rgb(1, 1), {"task": "denoise", "upscale": 1.0}, (1, 1)),
        (_rgb(7, 13), {"task": "sr", "upscale": 4.0}, (28, 52)),
        (_rgb(7, 13), {"task": "sr", "upscale": 1.0}, (7, 13)),
        (_rgb(7, 13), {"task": "sr", "upscale": 1.5}, (10, 20)),
        (_rgb(8, 500), {"task": "denoise", "upscale": 1.0}, (8, 500)),
        (_rgb(500, 8), {"task": "sr", "upscale": 1.0}, (500, 8)),
        (np.full((9, 5), 200, np.uint8), {"upscale": 2.0}, (18, 10)),
        (np.full((9, 5, 1), 200, np.uint8), {"upscale": 1.0}, (9, 5)),
        (np.full((9, 5, 2), 200, np.uint8), {"upscale": 1.0}, (9, 5)),
        (np.full((9, 5, 4), 200, np.uint8), {"upscale": 1.0}, (9, 5)),
        (np.full((9, 5, 3), 60000, np.uint16), {"upscale": 1.0}, (9, 5)),
        (_rgb(10, 30), {"task": "face", "upscale": 1.0}, (10, 30)),
        (_rgb(10, 30), {"task": "face", "upscale": 2.0}, (20, 60)),
        (_rgb(9, 9), {"fidelity": 0.0, "upscale": 1.0}, (9, 9)),
        (_rgb(9, 9), {"fidelity": 1.0, "upscale": 1.0}, (9, 9)),
        (_rgb(9, 9), {"cfg_scale": 1.0, "upscale": 1.0}, (9, 9)),
        (_rgb(9, 9), {"cfg_scale": 0.0, "upscale": 1.0}, (9, 9)),
    ],
)
def test_edge_inputs_give_the_right_size(
    v2: DiffBIRPipeline, image: np.ndarray, options: dict[str, Any], size: tuple[int, int]
) -> None:
    result = v2.restore(image, RestoreOptions(steps=1, seed=0, **options))
    assert result.image.dtype == np.uint8 and result.image.shape == (*size, 3)
    assert result.image.flags.c_contiguous


@pytest.mark.parametrize("version", ["v2", "v2.1"])
@pytest.mark.parametrize("sampler", ["spaced", "ddim", "dpmpp"])
@pytest.mark.parametrize("steps", [1, 2])
def test_very_few_steps_work_for_every_sampler(
    v2: DiffBIRPipeline, v21: DiffBIRPipeline, version: str, sampler: str, steps: int
) -> None:
    """Incl. v2.1's zero-SNR schedule, whose first step has alpha_bar = 0 (x0 only via v-prediction)."""
    pipe = v2 if version == "v2" else v21
    options = RestoreOptions(task="denoise", upscale=1.0, sampler=sampler, steps=steps, seed=1, fidelity=1.0)
    result = pipe.restore(_rgb(6, 10), options)
    assert result.image.shape == (6, 10, 3) and result.sampler_steps == steps


@pytest.mark.parametrize(
    "image, options, match",
    [
        (np.zeros((0, 5, 3), np.uint8), {}, "empty"),
        (np.zeros((5, 5, 5), np.uint8), {}, "channels"),
        (np.zeros((5, 5, 3), np.float32), {}, "float"),
        (np.zeros((5, 5, 3), np.int32), {}, "dtype"),
        (np.zeros((2, 5, 5, 3), np.uint8), {}, "shape"),
        (_rgb(5, 5), {"upscale": 0.5}, "upscale"),
        (_rgb(5, 5), {"upscale": float("nan")}, "upscale"),
        (_rgb(5, 5), {"steps": 0}, "steps"),
        (_rgb(5, 5), {"fidelity": 1.5}, "fidelity"),
        (_rgb(5, 5), {"cfg_scale": float("inf")}, "cfg_scale"),
        (_rgb(5, 5), {"sampler": "euler"}, "sampler"),
        (_rgb(5, 5), {"task": "inpaint"}, "task"),
        (_rgb(5, 5), {"seed": -1}, "seed"),
    ],
)
def test_bad_inputs_are_clear_errors(
    v2: DiffBIRPipeline, image: np.ndarray, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        v2.restore(image, RestoreOptions(**{"steps": 1, **options}))


def test_fp16_on_cpu_runs_every_task_in_bf16() -> None:
    """fp16 on a CPU becomes bf16 (documented); every net, the text tower included, then runs in bf16 while
    the sampler maths stays fp32, and the output is still finite and the right size."""
    pipe = _finite_postprocess(
        DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp16")
    )
    assert pipe.dtype == torch.bfloat16
    assert {p.dtype for net in pipe.stage1.values() for p in net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.models["sr"].parameters()} == {torch.bfloat16}
    for task, upscale in [("sr", 2.0), ("face", 1.0), ("denoise", 1.0)]:
        result = pipe.restore(_rgb(6, 10), RestoreOptions(task=task, upscale=upscale, steps=2, seed=0))
        assert result.image.shape == (int(6 * upscale), int(10 * upscale), 3)
