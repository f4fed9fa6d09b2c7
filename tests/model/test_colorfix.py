"""Colour correction: wavelet reconstruction against the reference, AdaIN by its defining property."""

from __future__ import annotations

import pytest
import torch

from model.colorfix import adain_color_fix, apply_color_fix, wavelet_decomposition, wavelet_reconstruction
from model.errors import InvalidInputError
from tests.model.reference import assert_forward_close, load_fixture


@pytest.fixture(scope="module")
def wavelet() -> dict[str, torch.Tensor]:
    t, _ = load_fixture("utils")
    return {k.removeprefix("wavelet."): v for k, v in t.items() if k.startswith("wavelet.")}


def test_wavelet_reconstruction_matches_reference(wavelet: dict[str, torch.Tensor]) -> None:
    out = wavelet_reconstruction(wavelet["content"], wavelet["style"])
    assert_forward_close(out, wavelet["result"], "wavelet_reconstruction")


def test_wavelet_decomposition_matches_reference(wavelet: dict[str, torch.Tensor]) -> None:
    high, low = wavelet_decomposition(wavelet["content"])
    assert_forward_close(high, wavelet["content_high"], "content_high")
    assert_forward_close(low, wavelet["content_low"], "content_low")
    torch.testing.assert_close(high + low, wavelet["content"], rtol=0, atol=1e-5)  # nothing is lost


def test_wavelet_keeps_style_colour() -> None:
    """A constant-colour style with a textured content: the result's mean colour is the style's."""
    content = torch.rand(1, 3, 64, 64)
    style = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 64, 64).contiguous()
    out = wavelet_reconstruction(content, style)
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), rtol=0, atol=0.02)


def test_adain_matches_style_statistics() -> None:
    torch.manual_seed(0)
    content, style = torch.rand(2, 3, 32, 24), torch.rand(2, 3, 16, 20) * 0.3 + 0.6
    out = adain_color_fix(content, style)
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.flatten(2).std(dim=2), style.flatten(2).std(dim=2), rtol=1e-3, atol=1e-4)
    assert out.shape == content.shape


def test_apply_color_fix_dispatch() -> None:
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert apply_color_fix("none", a, b) is a
    assert torch.equal(apply_color_fix("wavelet", a, b), wavelet_reconstruction(a, b))
    assert torch.equal(apply_color_fix("adain", a, b), adain_color_fix(a, b))
    with pytest.raises(InvalidInputError, match="unknown color_fix"):
        apply_color_fix("histogram", a, b)


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        wavelet_reconstruction(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))
    with pytest.raises(InvalidInputError):
        adain_color_fix(torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16))
