"""The whole service, as a client sees it: real API process + real worker process, both storage backends."""

from __future__ import annotations

import io
import signal

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from common.queue import queue_depth
from tests.e2e.conftest import API_KEYS, MAX_QUEUE_DEPTH, WEBHOOK_SECRET, Stack, wait_until
from tests.worker.conftest import Receiver, png_bytes

IMAGE = png_bytes(32, 32, (120, 80, 40))


def test_upload_poll_result(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, output_format="png", seed=3)
    doc = live_stack.wait_status(job_id)
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 1 and doc["error"] is None
    assert doc["result"]["width"] == 64 and doc["result"]["height"] == 64
    assert doc["progress"]["fraction"] == 1.0
    assert {"decode", "sampler", "encode_output", "total"} <= set(doc["timings"])

    resp = live_stack.http.get(f"/v1/jobs/{job_id}/result", headers=live_stack.headers())
    if live_stack.backend == "s3":
        assert resp.status_code == 307, resp.text
        resp = httpx.get(resp.headers["location"], timeout=10)  # the presigned URL works on its own
    assert resp.status_code == 200, resp.text
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == "PNG" and img.size == (64, 64)


def test_idempotency_key_returns_the_same_job(live_stack: Stack) -> None:
    key = {"Idempotency-Key": f"idem-{live_stack.backend}"}
    first = live_stack.submit(IMAGE, headers=key)
    second = live_stack.submit(IMAGE, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = live_stack.submit(png_bytes(32, 32, (1, 2, 3)), headers=key)
    assert other.status_code == 422
    live_stack.wait_status(first.json()["id"])


def test_each_key_sees_only_its_own_jobs(live_stack: Stack) -> None:
    alice, bob = API_KEYS
    assert live_stack.submit(IMAGE, key=None).status_code == 401
    assert live_stack.submit(IMAGE, key="not-a-key").status_code == 401
    job_id = live_stack.submit_ok(IMAGE)
    assert live_stack.http.get(f"/v1/jobs/{job_id}", headers=live_stack.headers(bob)).status_code == 404
    assert (
        live_stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=live_stack.headers(bob)).status_code == 404
    )
    assert live_stack.wait_status(job_id)["status"] == "succeeded"
    result = live_stack.http.get(f"/v1/jobs/{job_id}/result", headers=live_stack.headers(bob))
    assert result.status_code == 404
    assert live_stack.http.get(f"/v1/jobs/{job_id}", headers=live_stack.headers(alice)).status_code == 200


def test_queued_job_canceled_never_runs_and_deep_queue_gets_429(live_stack: Stack) -> None:
    live_stack.worker.signal(signal.SIGSTOP)  # hold the queue still
    try:
        accepted: list[str] = []
        rejected = None
        for _ in range(MAX_QUEUE_DEPTH + 3):
            resp = live_stack.submit(IMAGE)
            if resp.status_code == 429:
                rejected = resp
                break
            assert resp.status_code == 202, resp.text
            accepted.append(resp.json()["id"])
        assert rejected is not None, "the queue never became too deep"
        assert rejected.headers["Retry-After"] == "7"
        assert rejected.headers["content-type"].startswith("application/problem+json")
        for job_id in accepted:
            resp = live_stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=live_stack.headers())
            assert resp.status_code == 200 and resp.json()["status"] == "canceled", resp.text
    finally:
        live_stack.worker.signal(signal.SIGCONT)
    # The worker drains the canceled messages (skipping them), then a later job runs normally.
    wait_until(lambda: queue_depth(live_stack.redis, "gpu") == 0, 30, what="queue drained")
    after = live_stack.submit_ok(IMAGE)
    assert live_stack.wait_status(after)["status"] == "succeeded"
    for job_id in accepted:
        doc = live_stack.job(job_id)
        assert doc["status"] == "canceled" and doc["attempts"] == 0 and doc["started_at"] is None, doc


def test_running_job_cancel_stops_at_next_step(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, steps=100)
    live_stack.wait_sampling(job_id)
    resp = live_stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=live_stack.headers())
    assert resp.status_code in (200, 202), resp.text
    doc = live_stack.wait_status(job_id, timeout_s=30)
    assert doc["status"] == "canceled", doc
    assert doc["progress"]["step"] < 100
    assert live_stack.http.get(f"/v1/jobs/{job_id}/result", headers=live_stack.headers()).status_code == 409


def test_webhook_delivered_with_valid_signature_and_ssrf_refused(live_stack: Stack) -> None:
    receiver = Receiver()
    try:
        job_id = live_stack.submit_ok(IMAGE, callback_url=receiver.url)
        assert live_stack.wait_status(job_id)["status"] == "succeeded"
        wait_until(lambda: receiver.requests, 15, what="webhook delivery")
        headers, body = receiver.requests[0]
        payload = Webhook(WEBHOOK_SECRET).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_d3Jvbmctc2VjcmV0").verify(body, headers)
        assert payload["type"] == "job.completed"
        assert payload["data"]["status"] == "succeeded" and payload["data"]["id"] == job_id
    finally:
        receiver.close()
    for target in ("http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:80/"):
        resp = live_stack.submit(IMAGE, callback_url=target)
        assert resp.status_code == 422, (target, resp.text)


def test_readyz_sees_the_worker_heartbeat(live_stack: Stack) -> None:
    resp = live_stack.http.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["worker_heartbeat_age_s"] < 5
    metrics = httpx.get(f"http://127.0.0.1:{live_stack.metrics_port}/metrics", timeout=5).text
    assert "diffbir_worker_model_load_seconds" in metrics
    assert 'diffbir_worker_jobs_total{reason="",status="succeeded"}' in metrics
