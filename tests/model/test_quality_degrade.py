"""Synthetic degradations: kernels, per-image determinism, parameter bounds, sizes, the `degrade` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.cli import main
from model.quality import degrade, kernels
from model.quality.vocab import DEGRADATION_PRESETS


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.int16)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


# ---- kernels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel",
    [
        kernels.gaussian(21, 2.0),
        kernels.gaussian(21, 3.0, 0.7, 0.8),
        kernels.generalized_gaussian(21, 2.0, 0.5),
        kernels.generalized_gaussian(21, 1.5, 3.0, 2.5, -1.0),
        kernels.plateau(21, 2.0, 1.5),
        kernels.plateau(21, 1.0, 2.0, 3.0, 0.3),
        kernels.sinc(13, math.pi / 3, pad_to=21),
        kernels.gaussian(41, 12.0),
    ],
)
def test_kernels_sum_to_one_and_peak_at_the_centre(kernel: np.ndarray) -> None:
    assert kernel.shape in ((21, 21), (41, 41))
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9)
    c = kernel.shape[0] // 2
    assert kernel[c, c] == kernel.max()


def test_isotropic_gaussian_is_the_outer_product_of_1d_gaussians() -> None:
    ax = np.arange(-7, 8)
    g = np.exp(-(ax**2) / (2 * 1.7**2))
    expected = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(kernels.gaussian(15, 1.7), expected, rtol=1e-12)


def test_generalized_gaussian_with_beta_1_is_the_gaussian() -> None:
    np.testing.assert_allclose(
        kernels.generalized_gaussian(21, 2.0, 1.0, 1.0, 0.4), kernels.gaussian(21, 2.0, 1.0, 0.4), rtol=1e-12
    )


def test_anisotropic_rotation_turns_the_kernel() -> None:
    flat = kernels.gaussian(21, 4.0, 1.0, 0.0)
    turned = kernels.gaussian(21, 4.0, 1.0, math.pi / 2)
    np.testing.assert_allclose(turned, flat.T, atol=1e-12)
    assert not np.allclose(flat, flat.T)


def test_random_kernels_stay_in_their_spec() -> None:
    spec = degrade.SecondOrder().first.kernel
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        kernel, params = kernels.random_kernel(rng, spec)
        kinds.add(params["kind"])
        assert kernel.shape == (21, 21)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        assert params["size"] % 2 == 1 and 7 <= params["size"] <= 21
        if params["kind"] != "sinc":
            assert 0.2 <= params["sigma_x"] <= 3.0
        if "beta" in params:
            lo, hi = spec.betag if params["kind"].startswith("generalized") else spec.betap
            assert lo <= params["beta"] <= hi
    assert kinds == {*kernels.KERNEL_KINDS, "sinc"}


# ---- degradation presets ---------------------------------------------------------------------------------


def test_preset_vocabulary_matches_the_implementations() -> None:
    assert tuple(degrade.PRESETS) == DEGRADATION_PRESETS


@pytest.mark.parametrize("preset", DEGRADATION_PRESETS)
def test_same_seed_same_lq_and_parameters(preset: str) -> None:
    hq = _textured(64, 48)
    p = degrade.get_preset(preset)
    a, rec_a = degrade.degrade_image(hq, p, 4, seed=123)
    b, rec_b = degrade.degrade_image(hq, p, 4, seed=123)
    np.testing.assert_array_equal(a, b)
    assert rec_a == rec_b
    assert a.shape == (16, 12, 3) and a.dtype == np.uint8
    assert rec_a["lq_size"] == [16, 12]
    if preset != "bicubic":  # the bicubic preset draws nothing
        c, _ = degrade.degrade_image(hq, p, 4, seed=124)
        assert not np.array_equal(a, c)


def test_sizes_follow_the_scale_and_crop_the_hq_to_a_multiple() -> None:
    hq = _textured(66, 50)
    lq, record = degrade.degrade_image(hq, degrade.get_preset("realesrgan"), 4, seed=1)
    assert lq.shape == (16, 12, 3)
    assert record["hq_size"] == [66, 50] and record["hq_crop"] == [64, 48]
    same, _ = degrade.degrade_image(hq, degrade.get_preset("diffbir"), 1, seed=1)
    assert same.shape == (66, 50, 3)
    with pytest.raises(ValueError, match="smaller than the scale"):
        degrade.degrade_image(hq[:3], degrade.get_preset("bicubic"), 4, seed=1)


def test_drawn_parameters_stay_within_the_presets_ranges() -> None:
    hq = _textured(48, 48)
    second, first = degrade.get_preset("realesrgan"), degrade.get_preset("diffbir")
    seen_modes, seen_noise = set(), set()
    for seed in range(25):
        _, rec = degrade.degrade_image(hq, second, 4, seed)
        for step in rec["steps"]:
            if step["op"] == "jpeg":
                assert 30 <= step["quality"] <= 95
            if step["op"] == "noise":
                seen_noise.add(step["type"])
                if step["type"] == "gaussian":
                    assert 1 <= step["sigma"] <= 30
                else:
                    assert 0.05 <= step["scale"] <= 3
            if step["op"] == "resize":
                seen_modes.add(step["mode"])
        _, rec = degrade.degrade_image(hq, first, 4, seed)
        ops = [s["op"] for s in rec["steps"]]
        assert ops == ["blur", "resize", "noise", "jpeg", "resize"]
        assert 30 <= rec["steps"][3]["quality"] <= 100
        assert 0 <= rec["steps"][2]["sigma"] <= 15
        assert 1 <= rec["steps"][1]["factor"] <= 12
        assert 0.1 <= rec["steps"][0]["sigma_x"] <= 12
    assert seen_modes == set(degrade.RESIZE_MODES)
    assert seen_noise == {"gaussian", "poisson"}


def test_operations_have_sane_statistics() -> None:
    gray = torch.full((1, 3, 64, 64), 0.5)
    # a kernel that sums to 1 keeps a flat image flat
    torch.testing.assert_close(degrade.blur(gray, kernels.gaussian(21, 3.0, 1.0, 0.5)), gray)
    rng = np.random.default_rng(0)
    noisy = degrade.gaussian_noise(gray, 10.0, False, rng)
    assert (noisy - gray).std().item() * 255 == pytest.approx(10.0, rel=0.05)
    assert abs((noisy - gray).mean().item()) * 255 < 0.5
    gray_noise = degrade.gaussian_noise(gray, 10.0, True, rng)
    torch.testing.assert_close(gray_noise[:, 0], gray_noise[:, 2])
    # shot noise at 256 levels: zero mean, larger where the image is brighter
    ramp = torch.linspace(0.1, 0.9, 256).repeat(1, 3, 256, 1)
    shot = degrade.poisson_noise(ramp, 1.0, False, rng) - ramp
    assert abs(shot.mean().item()) * 255 < 0.5
    assert shot[..., 200:].std() > 1.5 * shot[..., :40].std()
    # blur removes noise energy
    assert degrade.blur(noisy, kernels.gaussian(21, 2.0)).std() < 0.3 * noisy.std()
    # JPEG: a lower quality moves the image further
    img = degrade.to_tensor(_textured(64, 64))
    err = [(degrade.jpeg(img, q) - img).abs().mean().item() for q in (95, 30)]
    assert 0 < err[0] < err[1]
    # bicubic x4 keeps the mean brightness
    hq = _textured(64, 64)
    lq, _ = degrade.degrade_image(hq, degrade.get_preset("bicubic"), 4, 0)
    assert abs(float(lq.mean()) - float(hq.mean())) < 2


def test_image_seed_depends_on_base_seed_and_name_only() -> None:
    assert degrade.image_seed(0, "a.png") == degrade.image_seed(0, "a.png")
    assert len({degrade.image_seed(s, n) for s in (0, 1) for n in ("a.png", "b.png")}) == 4
    assert 0 <= degrade.image_seed(7, "x") < 2**63


def test_degrade_command_writes_images_and_parameters(tmp_path, capsys) -> None:
    hq_dir = tmp_path / "hq"
    hq_dir.mkdir()
    for i in range(2):
        Image.fromarray(_textured(32, 40, seed=i)).save(hq_dir / f"im{i}.png")
    (hq_dir / "notes.txt").write_text("not an image")
    args = ["--preset", "realesrgan", "--seed", "5"]
    assert main(["degrade", str(hq_dir), "-o", str(tmp_path / "lq"), *args]) == 0
    assert "wrote 2 LQ images" in capsys.readouterr().out
    record = json.loads((tmp_path / "lq" / "im1.json").read_text())
    assert record["source"] == "im1.png" and record["base_seed"] == 5 and record["preset"] == "realesrgan"
    assert record["seed"] == degrade.image_seed(5, "im1.png")
    lq = np.asarray(Image.open(tmp_path / "lq" / "im1.png"))
    assert lq.shape == (8, 10, 3)
    # per image: the same file alone in a folder degrades to the same pixels
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "im1.png").write_bytes((hq_dir / "im1.png").read_bytes())
    assert main(["degrade", str(alone), "-o", str(tmp_path / "lq2"), *args]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "lq2" / "im1.png")), lq)


def test_degrade_command_rejects_a_missing_folder(tmp_path, capsys) -> None:
    assert main(["degrade", str(tmp_path / "nope"), "-o", str(tmp_path / "lq")]) == 2
    assert "not a folder" in capsys.readouterr().err
