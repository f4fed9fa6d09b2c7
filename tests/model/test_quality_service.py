"""benchmarks/eval_service.py: a running service's outputs scored and reported like `python -m model eval`."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eval_service():
    spec = importlib.util.spec_from_file_location("eval_service", ROOT / "benchmarks" / "eval_service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClient:
    """Answers like the service would: the input upscaled x4 (nearest), as PNG bytes."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def restore(self, path, timeout=None, **params) -> bytes:
        self.calls.append(params)
        img = Image.open(path).convert("RGB")
        buf = io.BytesIO()
        img.resize((img.width * 4, img.height * 4), Image.Resampling.NEAREST).save(buf, format="PNG")
        return buf.getvalue()


def test_service_outputs_are_scored_and_reported(tmp_path, eval_service) -> None:
    lq, hq = tmp_path / "lq", tmp_path / "hq"
    lq.mkdir()
    hq.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(small).save(lq / f"im{i}.png")
        Image.fromarray(np.kron(small, np.ones((4, 4, 1), np.uint8))).save(hq / f"im{i}.png")
    args = argparse.Namespace(
        lq_dir=lq, hq=hq, output=tmp_path / "out", url="http://127.0.0.1:1", task="sr", upscale=4.0,
        fidelity=0.5, steps=None, sampler=None, seed=0, metrics="psnr,ssim", metric_weights=None,
        metric_device="cpu", allow_downloads=False, crop_border=0, crop=32, limit=None, timeout=10.0,
    )  # fmt: skip
    client = FakeClient()
    results = eval_service.evaluate_service(args, client)
    assert [c["task"] for c in client.calls] == ["sr", "sr"]
    assert all(c["output_format"] == "png" and c["fidelity"] == 0.5 for c in client.calls)
    # the fake "restores" exactly the HQ (nearest x4 of the LQ): PSNR inf, SSIM 1
    assert [r["psnr"] for r in results["rows"]] == [float("inf")] * 2
    assert results["configs"][0]["summary"]["ssim"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"][0]["psnr"] == "inf"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "service" in page and page.count("<img") == 2 * 3  # LQ, service output, HQ per image
