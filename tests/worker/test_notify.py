"""Webhooks of finished jobs (worker.notify): signed, carrying the final document, SSRF-checked."""

from __future__ import annotations

import json

from common.webhooks import SIGNATURE_HEADER, verify_signature
from tests.worker.conftest import Harness, Receiver, sample
from worker.lifecycle import run_job


def test_webhook_is_signed_and_carries_the_final_job(harness: Harness) -> None:
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_secret="whsec", webhook_allow_private=True)
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        harness.ctx.webhook_pool.shutdown(wait=True)
        headers, body = receiver.requests[0]
        assert verify_signature(body, headers[SIGNATURE_HEADER], "whsec")
        payload = json.loads(body)
        assert payload["event"] == "job.succeeded"
        assert payload["job"]["id"] == job.id and payload["job"]["status"] == "succeeded"
        assert "owner" not in payload["job"]
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="delivered") == 1
    finally:
        receiver.close()


def test_webhook_to_private_target_is_refused_by_default(harness: Harness) -> None:
    receiver = Receiver()
    try:
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        harness.ctx.webhook_pool.shutdown(wait=True)
        assert receiver.requests == []
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="failed") == 1
    finally:
        receiver.close()
