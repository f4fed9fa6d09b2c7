"""The unaligned_face task through the real API and worker processes (tiny preset, CPU): the tiny preset's
stand-in detector reports one centred face, so the job runs detection, alignment, the face and sr
restorations and the blend, and says how many faces it restored."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from tests.e2e.conftest import Stack
from tests.worker.conftest import png_bytes

IMAGE = png_bytes(32, 32, (150, 110, 90))


def test_unaligned_face_job_restores_a_face_and_the_background(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, task="unaligned_face", upscale=2, steps=1, seed=11)
    doc = live_stack.wait_status(job_id, timeout_s=120)
    assert doc["status"] == "succeeded", doc
    assert doc["params"]["task"] == "unaligned_face"
    assert doc["result"]["faces"] == 1
    assert doc["result"]["width"] == 64 and doc["result"]["height"] == 64
    assert {"faces", "sampler", "total"} <= set(doc["timings"])

    resp = live_stack.http.get(f"/v1/jobs/{job_id}/result", headers=live_stack.headers())
    if live_stack.backend == "s3":
        assert resp.status_code == 307, resp.text
        resp = httpx.get(resp.headers["location"], timeout=10)
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(resp.content)).size == (64, 64)


def test_sr_jobs_report_no_face_count(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, task="sr", upscale=2, steps=1, seed=11)
    doc = live_stack.wait_status(job_id, timeout_s=120)
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["faces"] is None
