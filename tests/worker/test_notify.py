"""Webhooks through the durable outbox (common.webhook_outbox + worker.notify): which events are queued, how
they are signed (Standard Webhooks), and how leases, retries and fencing behave, on a real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from common.job_store import JobStore
from common.keys import WEBHOOKS_DUE_KEY, webhook_delivery_key
from common.webhook_outbox import Outbox, message_id
from tests.worker.conftest import Harness, Receiver, sample
from worker.lifecycle import run_job
from worker.notify import WebhookSender

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def sender(harness: Harness, **overrides: object) -> tuple[Outbox, WebhookSender, list[str]]:
    settings = harness.ctx.settings.model_copy(update=overrides)
    outbox = Outbox(harness.client, settings.webhook_lease_s)
    outcomes: list[str] = []

    def count(outcome: str) -> None:
        outcomes.append(outcome)
        harness.ctx.metrics.webhooks.labels(outcome=outcome).inc()

    return outbox, WebhookSender(outbox, settings, count, threads=1), outcomes


def drain(send: WebhookSender) -> int:
    sent = 0
    while send.send_one():
        sent += 1
    return sent


def test_completed_webhook_is_signed_per_standard_webhooks(harness: Harness) -> None:
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_secret=SECRET, webhook_allow_private=True)
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        _, send, outcomes = sender(harness)
        assert drain(send) == 1 and outcomes == ["delivered"]
        headers, body = receiver.requests[0]
        payload = Webhook(SECRET).verify(body, headers)  # the reference verifier accepts it
        assert headers["webhook-id"] == message_id(job.id, "completed")
        assert payload["type"] == "job.completed"
        assert payload["data"]["id"] == job.id and payload["data"]["status"] == "succeeded"
        assert "owner" not in payload["data"]
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 32).verify(body, headers)
        tampered = body.replace(b"succeeded", b"failed")
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(tampered, headers)
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="delivered") == 1
    finally:
        receiver.close()


def test_events_filter_chooses_start_and_completed(harness: Harness) -> None:
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_allow_private=True)
        both = harness.submit(callback_url=receiver.url, webhook_events_filter="start,completed")
        only_start = harness.submit(callback_url=receiver.url, webhook_events_filter=["start"])
        for job in (both, only_start):
            assert run_job(harness.ctx, job.id) == "succeeded"
        _, send, _ = sender(harness)
        assert drain(send) == 3
        seen = sorted(
            (json.loads(body)["data"]["id"], json.loads(body)["type"]) for _, body in receiver.requests
        )
        assert seen == sorted(
            [(both.id, "job.start"), (both.id, "job.completed"), (only_start.id, "job.start")]
        )
        start_doc = next(
            json.loads(b)["data"] for _, b in receiver.requests if json.loads(b)["type"] == "job.start"
        )
        assert start_doc["status"] == "running"
    finally:
        receiver.close()


def test_cancel_while_queued_sends_completed(harness: Harness, redis_client: redis.Redis) -> None:
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_allow_private=True)
        job = harness.submit(callback_url=receiver.url)
        canceled = JobStore(redis_client, harness.ctx.settings).request_cancel(job.id)  # the API's path
        assert canceled is not None and canceled.status == "canceled"
        _, send, _ = sender(harness)
        assert drain(send) == 1
        payload = json.loads(receiver.requests[0][1])
        assert payload["type"] == "job.completed" and payload["data"]["status"] == "canceled"
    finally:
        receiver.close()


def test_private_target_is_refused_and_dropped(harness: Harness) -> None:
    receiver = Receiver()
    try:
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        outbox, send, outcomes = sender(harness)
        assert drain(send) == 1 and outcomes == ["failed"]
        assert receiver.requests == [] and outbox.pending() == 0
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="failed") == 1
    finally:
        receiver.close()


def test_failures_are_retried_with_backoff_then_given_up(harness: Harness) -> None:
    receiver = Receiver()
    receiver.statuses = [503, 500, 500, 500]
    try:
        harness.ctx = harness.make_ctx(webhook_allow_private=True, webhook_max_retries=2)
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        outbox, send, outcomes = sender(harness, webhook_backoff_s=0.2)
        assert send.send_one() and not send.send_one()  # the retry is not due yet
        due = harness.client.zscore(WEBHOOKS_DUE_KEY, message_id(job.id, "completed"))
        assert due is not None and due / 1000 > time.time() + 0.1
        assert send.send_one(now=time.time() + 0.3)  # attempt 2 (backoff 0.4 s next)
        assert send.send_one(now=time.time() + 10)  # attempt 3 = 1 + webhook_max_retries: final
        assert len(receiver.requests) == 3 and outcomes == ["failed"] and outbox.pending() == 0
        assert len({h["webhook-id"] for h, _ in receiver.requests}) == 1  # one message id on every try
    finally:
        receiver.close()


def test_a_lost_attempt_is_redelivered_after_its_lease_and_fenced(
    harness: Harness, redis_client: redis.Redis
) -> None:
    """A sender that claimed a message and died: after the lease another claims it; a late finish from the
    first is refused."""
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_allow_private=True)
        job = harness.submit(callback_url=receiver.url)
        assert run_job(harness.ctx, job.id) == "succeeded"
        outbox = Outbox(redis_client, lease_s=30)
        lost = outbox.claim()
        assert lost is not None and lost.attempt == 1
        assert outbox.claim() is None  # leased: nobody else takes it meanwhile
        later = time.time() + 31
        _, send, outcomes = sender(harness)
        assert send.send_one(now=later) and outcomes == ["delivered"]
        assert len(receiver.requests) == 1
        assert not outbox.done(lost)  # the first sender came back: fenced off
        assert outbox.pending() == 0 and not redis_client.exists(webhook_delivery_key(lost.id))
    finally:
        receiver.close()


def test_progress_and_redelivered_starts_queue_no_webhook(harness: Harness) -> None:
    job = harness.submit(callback_url="http://127.0.0.1:9/hook", webhook_events_filter="start,completed")
    store = harness.ctx.store
    assert store.mark_running(job.id) is not None
    assert store.set_progress(job.id, "sampler", 1, 5)
    assert store.mark_running(job.id) is not None  # redelivery: running -> running
    outbox = Outbox(harness.client, 30)
    first = outbox.claim()
    assert first is not None and first.event == "start" and outbox.claim() is None
