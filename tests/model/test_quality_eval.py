"""`python -m model eval`, tiny preset (random weights) on CPU: configurations, drift, files, report."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from model.quality import configs, metrics, runner
from model.quality.degrade import degrade_folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two generated HQ images, degraded x4, evaluated under every configuration (the baseline swept)."""
    root = tmp_path_factory.mktemp("quality_eval")
    hq = root / "hq"
    hq.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    for i in range(2):
        img = np.stack([(x * (3 + i)) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1)
        img = np.clip(img + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(hq / f"img{i}.png")
    degrade_folder(hq, root / "lq", "bicubic", 0, 4)  # 16x16 inputs, 64x64 outputs
    out = root / "out"
    argv = [
        "eval", str(root / "lq"), "--hq", str(hq), "-o", str(out),
        "--preset", "tiny", "--device", "cpu", "--steps", "2", "--fidelity", "0", "--warmup", "0",
        "--crop", "48",
        "--configs", "fp16,bf16,graphs,tiled,fast",
        "--metrics", "psnr,ssim,psnr_y,ssim_y,lpips,niqe",
        "--metric-weights", str(root / "no-weights"),
        "--fidelity-sweep", "0,1",
    ]  # fmt: skip
    assert main(argv) == 0
    return hq, out, json.loads((out / "results.json").read_text())


def _config(results, name):
    return next(c for c in results["configs"] if c["name"] == name)


def test_configurations_run_or_say_why_not(evaluated) -> None:
    _, _, results = evaluated
    assert [c["name"] for c in results["configs"]] == ["fp32", "fp16", "bf16", "graphs", "tiled", "fast"]
    assert _config(results, "fp16")["status"] == "not applicable"
    assert "bf16" in _config(results, "fp16")["reason"]
    assert _config(results, "graphs")["status"] == "not applicable"
    assert "CUDA" in _config(results, "graphs")["reason"]
    for name in ("fp32", "bf16", "tiled", "fast"):
        assert _config(results, name)["status"] == "ok", _config(results, name)


def test_drift_against_the_fp32_eager_output(evaluated) -> None:
    _, out, results = evaluated
    rows = {(r["config"], r["image"]): r for r in results["rows"]}
    for stem in ("img0", "img1"):
        base = np.asarray(Image.open(out / "images" / "fp32" / f"{stem}.png"))
        assert "drift_psnr" not in rows[("fp32", stem)]
        for name in ("bf16", "tiled", "fast"):
            other = np.asarray(Image.open(out / "images" / name / f"{stem}.png"))
            row = rows[(name, stem)]
            assert row["drift_max_level"] == metrics.level_difference(other, base)[0]
            expected = metrics.psnr(other, base)
            assert row["drift_psnr"] == (str(expected) if math.isinf(expected) else pytest.approx(expected))
    # bf16 moves the computation a little, the 10-step sampler a lot
    bf16, fast = _config(results, "bf16")["summary"], _config(results, "fast")["summary"]
    assert 20 < bf16["drift_psnr"] < 80 and bf16["drift_max_level"] > 0
    assert fast["drift_psnr"] < bf16["drift_psnr"]
    assert rows[("fast", "img0")]["steps"] == configs.FAST_STEPS


def test_metrics_are_against_the_hq_of_the_same_name_and_skips_are_named(evaluated) -> None:
    hq_dir, out, results = evaluated
    assert results["metrics"] == ["psnr", "ssim", "psnr_y", "ssim_y"]
    assert set(results["skipped_metrics"]) == {"lpips", "niqe"}
    row = next(r for r in results["rows"] if r["config"] == "bf16" and r["image"] == "img1")
    restored = np.asarray(Image.open(out / "images" / "bf16" / "img1.png"))
    hq = np.asarray(Image.open(hq_dir / "img1.png"))
    assert row["psnr"] == pytest.approx(metrics.psnr(restored, hq))
    assert row["ssim_y"] == pytest.approx(metrics.ssim(restored, hq, y_channel=True))
    assert row["seconds"] > 0 and row["sampler_s"] > 0
    assert [p["fidelity"] for p in results["sweep"]] == [0.0, 1.0]
    assert all(len(p["rows"]) == 2 and p["psnr"] is not None for p in results["sweep"])
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 * 2 + 2 * 2  # ok configurations x images + sweep points x images
    assert {"config", "image", "psnr", "drift_psnr", "drift_max_level", "seconds"} <= set(table[0])


def test_report_shows_tables_plots_and_every_crop(evaluated) -> None:
    _, out, results = evaluated
    page = (out / "report.html").read_text()
    assert "RANDOM weights" in page
    assert "Drift from fp32 eager" in page and "Fidelity sweep" in page
    for c in results["configs"]:
        assert c["name"] in page
    assert "CUDA graphs need a CUDA device" in page
    for name, reason in results["skipped_metrics"].items():
        assert name in page and reason.split(":")[0] in page
    assert page.count("<svg") == 2  # fidelity sweep + speed vs quality
    sources = re.findall(r"<img src='([^']+)'", page)
    # per image: LQ, the four configurations that ran, HQ
    assert len(sources) == 2 * 6
    for src in sources:
        img = np.asarray(Image.open(out / src))
        assert img.shape == (48, 48, 3)


def test_the_tiled_configuration_tiles_every_stage_that_can() -> None:
    pipe = runner.build(runner.PipelineSpec(preset="tiny", device="cpu"), configs.parse_config("tiled"))
    plan = pipe.plan((32, 32), (128, 128), "sr", 1, True)
    assert plan.stage1_tile and plan.latent and plan.vae_encode and plan.vae_decode
    untiled = runner.build(runner.PipelineSpec(preset="tiny", device="cpu"), configs.BASELINE)
    assert not untiled.plan((32, 32), (128, 128), "sr", 1, True).any


def test_bad_configuration_is_a_user_error(tmp_path, capsys) -> None:
    assert main(["eval", str(tmp_path), "-o", str(tmp_path / "o"), "--configs", "fp16+fp32"]) == 2
    assert "more than one precision" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "-o", str(tmp_path / "o"), "--configs", "warp"]) == 2
    assert configs.parse_config("graphs+fp16+compile") == configs.RunConfig(
        "graphs+fp16+compile", precision="fp16", cuda_graphs=True, compile=True
    )
