"""Conversions, resizing and padding with the reference pipeline's exact rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.errors import InvalidInputError
from model.imageops import (
    crop,
    ensure_min_short_edge,
    pad_to_multiple,
    resize_bicubic_aa,
    resize_short_edge,
    short_edge_size,
    to_uint8,
    uint8_to_tensor,
)
from tests.model.reference import assert_forward_close, load_fixture


@pytest.fixture(scope="module")
def utils() -> dict[str, torch.Tensor]:
    return load_fixture("utils")[0]


def test_resize_short_edge_matches_reference(utils: dict[str, torch.Tensor]) -> None:
    _, meta = load_fixture("utils")
    out = resize_short_edge(utils["resize_short_edge.input"], meta["resize_short_edge_size"])
    assert out.shape == (1, 3, 106, 64)  # 40 * 64/24 = 106.67, truncated
    assert_forward_close(out, utils["resize_short_edge.output"], "resize_short_edge")


def test_resize_down_matches_reference(utils: dict[str, torch.Tensor]) -> None:
    out = resize_bicubic_aa(utils["resize_short_edge.output"], (40, 24))
    assert_forward_close(out, utils["resize_down.output"], "resize_down")


def test_antialias_matters_even_when_upsampling(utils: dict[str, torch.Tensor]) -> None:
    x = utils["resize_short_edge.input"]
    plain = F.interpolate(x, size=(106, 64), mode="bicubic")
    assert (plain - utils["resize_short_edge.output"]).abs().max() > 1e-3


def test_short_edge_sizes() -> None:
    assert short_edge_size(40, 24, 64) == (106, 64)
    assert short_edge_size(24, 40, 64) == (64, 106)
    assert short_edge_size(30, 30, 512) == (512, 512)


def test_ensure_min_short_edge() -> None:
    x = torch.rand(1, 3, 600, 520)
    assert ensure_min_short_edge(x, 512) is x
    assert ensure_min_short_edge(torch.rand(1, 3, 100, 50), 512).shape == (1, 3, 1024, 512)


def test_pad64_matches_reference(utils: dict[str, torch.Tensor]) -> None:
    padded, (ph, pw) = pad_to_multiple(utils["resize_short_edge.input"], 64)
    assert (ph, pw) == (24, 40)
    assert torch.equal(padded, utils["pad64.output"])
    assert torch.equal(crop(padded, 40, 24), utils["resize_short_edge.input"])


def test_pad_to_multiple_modes_and_noop() -> None:
    x = torch.rand(1, 3, 5, 7)
    same, amounts = pad_to_multiple(torch.rand(1, 3, 16, 8), 8)
    assert amounts == (0, 0) and same.shape == (1, 3, 16, 8)
    rep, amounts = pad_to_multiple(x, 4, mode="replicate")
    assert amounts == (3, 1) and rep.shape == (1, 3, 8, 8)
    assert torch.equal(rep[:, :, 7, :7], x[:, :, 4, :]) and torch.equal(rep[:, :, :5, 7], x[:, :, :, 6])
    with pytest.raises(InvalidInputError):
        pad_to_multiple(x, 0)


def test_to_uint8_truncates_like_reference() -> None:
    t, _ = load_fixture("pipeline_stage2")
    for run in ("v2_noise", "v21_cond_aug"):
        post, ref = t[f"{run}.postprocessed"], t[f"{run}.uint8"].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(to_uint8(post), ref)
        rounded = (post * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert (rounded != ref).any()  # rounding instead would be caught


def test_uint8_round_trip_and_layout() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    x = uint8_to_tensor(img)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    assert float(x[0, 1, 2, 3]) == pytest.approx(img[2, 3, 1] / 255)
    np.testing.assert_array_equal(to_uint8(x)[0], img)
    assert uint8_to_tensor(np.stack([img, img]), dtype=torch.float16).shape == (2, 3, 5, 7)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="uint8"):
        uint8_to_tensor(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="RGB"):
        uint8_to_tensor(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(InvalidInputError):
        resize_bicubic_aa(torch.rand(3, 4, 4), (2, 2))
    with pytest.raises(InvalidInputError):
        resize_bicubic_aa(torch.rand(1, 3, 4, 4), (0, 2))


def test_uint8_to_tensor_accepts_read_only_arrays_without_warning() -> None:
    import warnings

    from model.imageops import uint8_to_tensor

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = uint8_to_tensor(image)
    assert x.shape == (1, 3, 2, 3) and float(x[0, 2, 1, 2]) == pytest.approx(17 / 255)


def test_pillow_bicubic_resize_of_uint8_batches() -> None:
    from PIL import Image

    from model.errors import InvalidInputError
    from model.imageops import resize_uint8_bicubic_pil

    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    out = resize_uint8_bicubic_pil(batch, (10, 14))
    assert out.shape == (2, 10, 14, 3) and out.dtype == np.uint8
    assert np.array_equal(
        out[1], np.asarray(Image.fromarray(batch[1]).resize((14, 10), Image.Resampling.BICUBIC))
    )
    with pytest.raises(InvalidInputError):
        resize_uint8_bicubic_pil(batch.astype(np.uint16), (10, 14))
