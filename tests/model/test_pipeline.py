"""DiffBIRPipeline end to end with the tiny preset (random weights): sizes, progress, cancellation, seeds,
timings, batching and input handling. Small images and few steps keep it fast on a CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.errors import CanceledError, InvalidInputError, OutOfMemoryError
from model.options import STAGES, RestoreOptions, RestoreResult
from model.pipeline import DiffBIRPipeline

FAST = {"steps": 2}


@pytest.fixture(scope="module")
def pipe() -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp32")


def _image(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _sibling(pipe: DiffBIRPipeline, **kwargs: Any) -> DiffBIRPipeline:
    """Another pipeline over the same loaded modules (e.g. other limits)."""
    args = {
        "version": pipe.version,
        "preset": pipe.preset,
        "device": pipe.device,
        "min_short_edge": pipe.min_short_edge,
        "max_pixels": pipe.max_pixels,
        "tiles": pipe.tiles,
        **kwargs,
    }
    return DiffBIRPipeline(pipe.models, pipe.stage1, **args)


@pytest.mark.parametrize(
    "task, upscale, size",
    [("sr", 2.0, (32, 48)), ("sr", 4.0, (64, 96)), ("denoise", 1.0, (16, 24)), ("face", 1.0, (16, 24))],
)
def test_output_sizes(pipe: DiffBIRPipeline, task: str, upscale: float, size: tuple[int, int]) -> None:
    result = pipe.restore(_image(), RestoreOptions(task=task, upscale=upscale, seed=1, **FAST))
    assert result.image.dtype == np.uint8
    assert result.image.shape == (*size, 3)
    assert result.sampler_steps == 2 and result.seed == 1


def test_odd_sizes_are_padded_and_cropped(pipe: DiffBIRPipeline) -> None:
    result = pipe.restore(_image(13, 21), RestoreOptions(upscale=1.5, seed=0, sampler="ddim", **FAST))
    assert result.image.shape == (20, 32, 3)  # round(13 * 1.5), round(21 * 1.5)


def test_progress_sequence_and_timings(pipe: DiffBIRPipeline) -> None:
    events: list[tuple[str, int, int]] = []
    result = pipe.restore(
        _image(),
        RestoreOptions(task="denoise", upscale=1.0, steps=3, seed=0),
        progress=lambda *e: events.append(e),
    )
    assert events == [
        ("stage1", 0, 1),
        ("stage1", 1, 1),
        ("vae_encode", 0, 1),
        ("vae_encode", 1, 1),
        ("sampler", 0, 3),
        ("sampler", 1, 3),
        ("sampler", 2, 3),
        ("sampler", 3, 3),
        ("vae_decode", 0, 1),
        ("vae_decode", 1, 1),
        ("postprocess", 0, 1),
        ("postprocess", 1, 1),
    ]
    assert set(result.timings) == {*STAGES, "total"}
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["sampler"]
    assert result.peak_memory_bytes is None  # CPU


def test_cancel_between_steps_raises(pipe: DiffBIRPipeline) -> None:
    seen: list[int] = []

    def progress(stage: str, step: int, total: int) -> None:
        if stage == "sampler":
            seen.append(step)

    with pytest.raises(CanceledError):
        pipe.restore(
            _image(), RestoreOptions(steps=5, seed=0), progress=progress, should_cancel=lambda: len(seen) >= 3
        )  # 0, 1, 2 reported -> cancel before step 3
    assert max(seen) == 2
    with pytest.raises(CanceledError):
        pipe.restore(_image(), RestoreOptions(seed=0, **FAST), should_cancel=lambda: True)


def test_seed_determinism(pipe: DiffBIRPipeline) -> None:
    options = RestoreOptions(task="denoise", upscale=1.0, seed=123, **FAST)
    first = pipe.restore(_image(), options)
    again = pipe.restore(_image(), options)
    other = pipe.restore(_image(), RestoreOptions(task="denoise", upscale=1.0, seed=124, **FAST))
    np.testing.assert_array_equal(first.image, again.image)
    assert np.abs(first.image.astype(int) - other.image.astype(int)).max() > 0
    drawn = pipe.restore(_image(), RestoreOptions(task="denoise", upscale=1.0, **FAST))
    replay = pipe.restore(_image(), RestoreOptions(task="denoise", upscale=1.0, seed=drawn.seed, **FAST))
    np.testing.assert_array_equal(drawn.image, replay.image)


def test_batch_matches_single_runs(pipe: DiffBIRPipeline) -> None:
    images = [_image(seed=s) for s in range(3)] + [_image(20, 20, seed=9)]
    options = [
        RestoreOptions(task="denoise", upscale=1.0, fidelity=0.5, seed=s, **FAST) for s in (5, 6, 7, 8)
    ]
    batch = pipe.restore_batch(images, options)
    for image, opt, got in zip(images, options, batch, strict=True):
        assert isinstance(got, RestoreResult)
        alone = pipe.restore(image, opt)
        assert got.seed == alone.seed
        assert np.abs(got.image.astype(int) - alone.image.astype(int)).max() <= 2


def test_batch_isolates_bad_and_canceled_items(pipe: DiffBIRPipeline) -> None:
    events: list[list[tuple[str, int, int]]] = [[], [], []]
    images = [_image(seed=0), np.zeros((4, 4, 3), np.float32), _image(seed=2)]
    options = [RestoreOptions(task="denoise", upscale=1.0, seed=s, steps=3) for s in (0, 1, 2)]
    cancels = [None, None, lambda: len(events[2]) >= 5]  # cancel item 2 during sampling
    results = pipe.restore_batch(
        images,
        options,
        [events[i].append for i in range(3)] and [lambda *e, i=i: events[i].append(e) for i in range(3)],
        cancels,
    )
    assert isinstance(results[0], RestoreResult)
    assert isinstance(results[1], InvalidInputError)
    assert isinstance(results[2], CanceledError)
    alone = pipe.restore(images[0], options[0])
    assert np.abs(results[0].image.astype(int) - alone.image.astype(int)).max() <= 2
    assert events[0][-1] == ("postprocess", 1, 1)
    assert ("postprocess", 1, 1) not in events[2]


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("HIP out of memory"),
    ],
)
def test_out_of_memory_becomes_the_models_error_for_its_group_only(
    pipe: DiffBIRPipeline, monkeypatch: pytest.MonkeyPatch, error: RuntimeError
) -> None:
    net = pipe.stage1["sr"]
    real = net.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] >= 48:  # only the larger image's group runs out of memory
            raise error
        return real(x)

    monkeypatch.setattr(net, "forward", forward)
    options = [RestoreOptions(upscale=2.0, seed=0, **FAST)] * 2
    small, big = pipe.restore_batch([_image(16, 24), _image(32, 48)], options)
    assert isinstance(small, RestoreResult)
    assert isinstance(big, OutOfMemoryError) and big.__cause__ is error
    assert "out of memory" in str(big)  # still reads as torch's OOM to code that matches the message
    with pytest.raises(OutOfMemoryError):
        pipe.restore(_image(32, 48), options[0])


def test_other_runtime_errors_are_reported_as_they_are(
    pipe: DiffBIRPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    def forward(x: torch.Tensor) -> torch.Tensor:
        raise error

    monkeypatch.setattr(pipe.stage1["sr"], "forward", forward)
    (result,) = pipe.restore_batch([_image()], [RestoreOptions(upscale=2.0, seed=0, **FAST)])
    assert result is error


@pytest.mark.parametrize(
    "image, options, match",
    [
        (np.zeros((0, 8, 3), np.uint8), RestoreOptions(), "empty"),
        (np.zeros((8, 8, 3), np.float32), RestoreOptions(), "float"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(task="colorize"), "task"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(sampler="euler"), "sampler"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(steps=0), "steps"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(fidelity=2.0), "fidelity"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(color_fix="lut"), "color_fix"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(upscale=0.5), "upscale"),
        (np.zeros((8, 8, 3), np.uint8), RestoreOptions(seed=-1), "seed"),
    ],
)
def test_bad_inputs_raise_invalid_input(
    pipe: DiffBIRPipeline, image: np.ndarray, options: RestoreOptions, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        pipe.restore(image, options)


def test_max_pixels_limits_input_and_output(pipe: DiffBIRPipeline) -> None:
    limited = _sibling(pipe, max_pixels=1000)
    with pytest.raises(InvalidInputError, match=r"input image is 40x40 .*limit of 1000"):
        limited.restore(np.zeros((40, 40, 3), np.uint8), RestoreOptions(upscale=1.0, **FAST))
    with pytest.raises(InvalidInputError, match=r"output image is 64x64 .*limit of 1000"):
        limited.restore(np.zeros((16, 16, 3), np.uint8), RestoreOptions(upscale=4.0, **FAST))


@pytest.mark.parametrize(
    "image, conversion",
    [
        (np.full((16, 16), 128, np.uint8), "gray_to_rgb"),
        (np.full((16, 16, 4), 200, np.uint8), "alpha_on_white"),
        (np.full((16, 16, 3), 40000, np.uint16), "16bit_to_8bit"),
    ],
)
def test_documented_conversions(pipe: DiffBIRPipeline, image: np.ndarray, conversion: str) -> None:
    result = pipe.restore(image, RestoreOptions(task="face", upscale=1.0, seed=0, **FAST))
    assert result.image.shape == (16, 16, 3)
    assert conversion in result.conversions


def test_small_memory_budget_tiles_every_stage(pipe: DiffBIRPipeline) -> None:
    tight = _sibling(pipe, memory_budget_bytes=1)
    plan = tight.plan((48, 48), (192, 192), "sr", batch=1, cfg=True)
    assert plan.stage1_tile and plan.latent and plan.vae_encode and plan.vae_decode
    events: list[tuple[str, int, int]] = []
    result = tight.restore(
        _image(24, 24),
        RestoreOptions(upscale=4.0, seed=0, fidelity=0.5, **FAST),
        progress=lambda *e: events.append(e),
    )
    assert result.image.shape == (96, 96, 3)
    assert ("sampler", 2, 2) in events
    events.clear()
    face = tight.restore(
        _image(80, 80),
        RestoreOptions(task="face", upscale=1.0, seed=0, **FAST),
        progress=lambda *e: events.append(e),
    )
    assert face.image.shape == (80, 80, 3)
    assert [e for e in events if e[0] == "stage1"] == [("stage1", i, 4) for i in range(5)]  # 2x2 SwinIR tiles
    roomy = pipe.plan((48, 48), (192, 192), "sr", batch=1, cfg=True)
    assert not roomy.any


def test_full_preset_loads_from_the_converted_cache(tmp_path: Any) -> None:
    """The production loading path: registry files + the converted cache (here holding tiny weights, whose
    config travels in the cache's metadata) stand in for the official SD/ControlNet pickles."""
    import torch

    from model.loaders import converted_cache_path
    from model.loading import init_tiny_random, save_converted
    from model.stage1 import build_stage1

    save_converted(init_tiny_random(seed=1), converted_cache_path(tmp_path, "v2", "v2"))
    torch.save(build_stage1("bsrnet", preset="full", device="cpu").net.state_dict(), tmp_path / "BSRNet.pth")
    full = DiffBIRPipeline.from_preset(
        "full", "v2", weights_dir=tmp_path, device="cpu", precision="fp32", tasks=["sr"]
    )
    assert full.tasks == ("sr",) and full.stage1["sr"].kind == "bsrnet"
    result = full.restore(_image(8, 8), RestoreOptions(upscale=2.0, seed=0, cfg_scale=1.0, **FAST))
    assert result.image.shape == (16, 16, 3)
    with pytest.raises(InvalidInputError, match="not loaded"):
        full.restore(_image(8, 8), RestoreOptions(task="face", **FAST))
