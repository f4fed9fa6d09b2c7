"""model/inputs.py: each bad input is an InvalidInputError; documented conversions give documented pixels."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import InvalidInputError
from model.inputs import output_size, prepare_image


def test_rgb_uint8_passes_unchanged() -> None:
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    prepared = prepare_image(img)
    assert prepared.conversions == []
    np.testing.assert_array_equal(prepared.image, img)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 1)])
def test_gray_becomes_rgb(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    prepared = prepare_image(img)
    assert prepared.image.shape == (6, 4, 3)
    assert prepared.conversions == ["gray_to_rgb"]
    for c in range(3):
        np.testing.assert_array_equal(prepared.image[:, :, c], img.reshape(6, 4))


def test_rgba_is_composited_on_white() -> None:
    img = np.zeros((2, 2, 4), dtype=np.uint8)
    img[0, 0] = (10, 20, 30, 255)  # opaque: colour kept
    img[0, 1] = (10, 20, 30, 0)  # transparent: white
    img[1, 0] = (0, 0, 0, 128)  # half: mid gray (255 * (1 - 128/255) = 127)
    prepared = prepare_image(img)
    assert prepared.conversions == ["alpha_on_white"]
    assert prepared.image[0, 0].tolist() == [10, 20, 30]
    assert prepared.image[0, 1].tolist() == [255, 255, 255]
    assert prepared.image[1, 0].tolist() == [127, 127, 127]


def test_gray_alpha_is_composited_then_expanded() -> None:
    img = np.array([[[100, 0], [100, 255]]], dtype=np.uint8)
    prepared = prepare_image(img)
    assert prepared.conversions == ["alpha_on_white", "gray_to_rgb"]
    assert prepared.image[0].tolist() == [[255] * 3, [100] * 3]


def test_16bit_is_scaled_to_8bit() -> None:
    img = np.array([[[0, 257, 65535]]], dtype=np.uint16)
    prepared = prepare_image(img)
    assert prepared.conversions == ["16bit_to_8bit"]
    assert prepared.image.dtype == np.uint8
    assert prepared.image[0, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 0), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.float32), "float"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        ([[1, 2], [3, 4]], "numpy"),
    ],
)
def test_bad_inputs_are_refused(bad: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        prepare_image(bad)


def test_max_pixels_applies_to_input_and_output() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="limit of 99"):
        prepare_image(img, max_pixels=99)
    prepare_image(img, max_pixels=100)
    assert output_size(10, 10, 2.0, max_pixels=400) == (20, 20)
    with pytest.raises(InvalidInputError, match=r"output image is 40x40 .* limit of 400"):
        output_size(10, 10, 4.0, max_pixels=400)


@pytest.mark.parametrize("factor", [0.5, 17.0, float("nan")])
def test_bad_upscale_is_refused(factor: float) -> None:
    with pytest.raises(InvalidInputError, match="upscale"):
        output_size(10, 10, factor)
