"""PSNR/SSIM against closed forms and scikit-image; learned metrics skipped by name, weights from a folder."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import scipy.io
import skimage.color
import skimage.metrics

from model.quality import metrics
from model.quality.learned import LearnedMetrics
from model.quality.scoring import Scorer
from model.quality.vocab import PYIQA_NAMES


def _pair(seed: int = 0, size: tuple[int, int] = (48, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    a = np.stack([(x * 9) % 256, (y * 6) % 256, ((x * y) // 3) % 256], -1).astype(np.int16)
    a = np.clip(a + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-25, 25, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_known_values() -> None:
    a = np.full((16, 16, 3), 100, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-12)  # 48.1308 dB
    assert metrics.psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-4)
    assert metrics.psnr(a, a + 10) == pytest.approx(20 * math.log10(25.5), abs=1e-12)


def test_y_channel_is_matlab_studio_range_luma() -> None:
    white, black = np.full((12, 12, 3), 255, np.uint8), np.zeros((12, 12, 3), np.uint8)
    assert metrics.to_y(white.astype(float))[0, 0, 0] == pytest.approx(235.0, abs=1e-3)
    assert metrics.to_y(black.astype(float))[0, 0, 0] == pytest.approx(16.0)
    assert metrics.psnr(white, black, y_channel=True) == pytest.approx(20 * math.log10(255 / 219), abs=1e-4)


def test_ssim_of_flat_images_has_a_closed_form() -> None:
    a, b = np.full((20, 20, 3), 100, np.uint8), np.full((20, 20, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # no variance: only the luminance term
    assert metrics.ssim(a, b) == pytest.approx(expected, abs=1e-12)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_and_ssim_match_scikit_image(crop: int) -> None:
    a, b = _pair()
    sl = (slice(crop, -crop or None), slice(crop, -crop or None))
    ac, bc = a[sl], b[sl]
    assert metrics.psnr(a, b, crop) == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(ac, bc, data_range=255), abs=1e-9
    )
    ssim_kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    per_channel = [
        skimage.metrics.structural_similarity(ac[..., c].astype(float), bc[..., c].astype(float), **ssim_kw)
        for c in range(3)
    ]
    assert metrics.ssim(a, b, crop) == pytest.approx(np.mean(per_channel), abs=1e-9)
    # Y channel: scikit-image's own BT.601 conversion
    ya = skimage.color.rgb2ycbcr(ac)[..., 0]
    yb = skimage.color.rgb2ycbcr(bc)[..., 0]
    assert metrics.psnr(a, b, crop, y_channel=True) == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-6
    )
    assert metrics.ssim(a, b, crop, y_channel=True) == pytest.approx(
        skimage.metrics.structural_similarity(ya, yb, **ssim_kw), abs=1e-6
    )


def test_metrics_reject_mismatched_or_tiny_images() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(a, b[:-1])
    with pytest.raises(ValueError, match="SSIM needs"):
        metrics.ssim(a[:8, :8], b[:8, :8])


def test_level_difference_and_common_crop() -> None:
    a, b = _pair()
    b2 = a.copy()
    b2[3, 4, 1] = min(255, int(a[3, 4, 1]) + 7)
    assert metrics.level_difference(a, b2)[0] == int(b2[3, 4, 1]) - int(a[3, 4, 1])
    x, y = metrics.common_crop(a, b[:40, :33])
    assert x.shape == y.shape == (40, 33, 3)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything resolves a host that is not loopback."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            asked.append(str(host))
            raise OSError(f"test: no network ({host})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield asked
    assert asked == [], f"tried to reach {asked}"


def test_learned_metrics_without_weights_are_skipped_by_name(tmp_path, no_network) -> None:
    names = list(PYIQA_NAMES)
    learned = LearnedMetrics(names, weights_dir=tmp_path)
    assert learned.metrics == {}
    assert sorted(learned.skipped) == sorted(names)
    for name, reason in learned.skipped.items():
        assert reason.startswith("weights absent:"), (name, reason)
    assert str(tmp_path / "pyiqa" / "niqe_modelparameters.mat") in learned.skipped["niqe"]
    assert "musiq_koniq_ckpt" in learned.skipped["musiq"]
    assert "vit_base_patch8_224" in learned.skipped["maniqa"]


def test_niqe_runs_with_its_parameters_in_the_weights_folder(tmp_path, no_network) -> None:
    """The weights-folder plumbing: NIQE's parameter file (here a stand-in Gaussian model) is found there."""
    (tmp_path / "pyiqa").mkdir()
    scipy.io.savemat(
        tmp_path / "pyiqa" / "niqe_modelparameters.mat",
        {"mu_prisparam": np.zeros((1, 36)), "cov_prisparam": np.eye(36)},
    )
    scorer = Scorer(["psnr", "niqe", "musiq"], weights_dir=tmp_path)
    assert scorer.active == ["psnr", "niqe"]
    assert list(scorer.skipped) == ["musiq"]
    a, b = _pair(size=(128, 128))
    scores = scorer.score(a, b)
    assert set(scores) == {"psnr", "niqe"}
    assert math.isfinite(scores["niqe"]) and scores["niqe"] > 0
    assert scorer.score(a, None) == {"niqe": scores["niqe"]}  # no reference: only the no-reference metric
