"""Fault paths found in the security/fault review: every job ends terminal, stale attempts write nothing,
storage errors do not leak internals into the job document, and worker bookkeeping keys expire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from botocore.exceptions import EndpointConnectionError
from celery import Celery

from common.blobstore import BlobNotFoundError, result_key
from common.idempotency import IdempotencyRecord, IdempotencyStore
from common.jobs import ErrorCode, JobStatus, ResultInfo, result_url
from common.keys import HELD_PREFIX, PARKED_PREFIX
from common.queue import enqueue_restore, make_celery
from tests.worker.conftest import Harness
from tests.worker.test_batching import make_batcher
from tests.worker.test_recovery import ownership
from worker import lifecycle
from worker.batching import job_id_of
from worker.execution import Execution


class UnreachableS3:
    """A blob store whose every write fails the way boto3 does when the endpoint is down."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise EndpointConnectionError(endpoint_url=f"http://minio.internal.corp:9000/diffbir-prod/{key}")


def test_storage_failure_does_not_put_internal_endpoints_in_the_job(harness: Harness) -> None:
    job = harness.submit()
    harness.ctx.blobs = UnreachableS3(harness.ctx.blobs)  # type: ignore[assignment]
    # The result store is retried until this deadline (120 s by default), then the job fails.
    harness.ctx.settings = harness.ctx.settings.model_copy(update={"worker_finish_retry_s": 1.0})
    assert lifecycle.run_job(harness.ctx, job.id) == "failed"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.error is not None and done.error.code is ErrorCode.internal
    assert "storage unavailable" in done.error.message
    assert "minio.internal.corp" not in done.error.message and "diffbir-prod" not in done.error.message


def test_stale_attempt_neither_overwrites_the_result_nor_the_record(harness: Harness) -> None:
    """Worker A was presumed dead; the job was redelivered to B, which finished it. A finishes late."""
    job = harness.submit()
    stale = harness.ctx.store.mark_running(job.id)  # A's attempt 1
    assert stale is not None
    store = harness.ctx.store
    store.mark_running(job.id)  # B's attempt 2
    harness.ctx.blobs.put(result_key(job.id, "png"), b"B's result", "image/png")
    info = ResultInfo(url=result_url(job.id), content_type="image/png", width=32, height=24)
    store.succeed(job.id, info, None, 2)

    late = type(
        "Result", (), {"image": np.zeros((24, 32, 3), np.uint8), "timings": {}, "peak_memory_bytes": None}
    )
    assert lifecycle.finish_succeeded(harness.ctx, Execution(harness.ctx, stale), late) == "skipped"
    assert harness.ctx.blobs.get(result_key(job.id, "png")) == b"B's result"
    done = store.get(job.id)
    assert done is not None and done.status is JobStatus.succeeded and done.attempts == 2


def test_stale_attempt_stops_once_a_newer_attempt_takes_over(harness: Harness) -> None:
    job = harness.submit(steps=40)
    harness.pipeline.step_sleep_s = 0.01

    def redelivered_elsewhere(step: int) -> None:
        if step == 3:
            harness.ctx.store.mark_running(job.id)  # another worker's attempt 2 starts

    harness.pipeline.on_step = redelivered_elsewhere
    assert lifecycle.run_job(harness.ctx, job.id) == "skipped"
    assert harness.pipeline.steps_run < 40  # stopped early instead of burning the GPU
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.running and done.attempts == 2  # B's, untouched
    with pytest.raises(BlobNotFoundError):
        harness.ctx.blobs.get(result_key(job.id, "png"))


def test_a_redelivered_message_after_success_neither_runs_nor_writes(harness: Harness) -> None:
    job = harness.submit()
    assert lifecycle.run_job(harness.ctx, job.id) == "succeeded"
    stored = harness.ctx.blobs.get(result_key(job.id, "png"))
    before = harness.ctx.store.get(job.id)
    assert lifecycle.run_job(harness.ctx, job.id) == "skipped"
    assert harness.pipeline.calls == 1
    assert harness.ctx.blobs.get(result_key(job.id, "png")) == stored
    assert harness.ctx.store.get(job.id) == before


def test_a_bug_while_starting_a_job_fails_it_instead_of_leaving_it_running(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.submit()

    def broken(_job_id: str) -> bool:
        raise KeyError("bug")

    monkeypatch.setattr(harness.ctx.store, "is_cancel_requested", broken)
    with pytest.raises(KeyError):
        lifecycle.run_job(harness.ctx, job.id)
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is ErrorCode.internal


def test_a_bug_outside_the_per_job_handling_fails_the_job(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.submit()

    def broken(*_args: object) -> list[str]:
        raise ValueError("bug")

    monkeypatch.setattr(lifecycle, "run_executions", broken)
    with pytest.raises(ValueError):
        lifecycle.run_job(harness.ctx, job.id)
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.message == "internal error (ValueError)"


@pytest.fixture
def producer(harness: Harness) -> Iterator[Celery]:
    app = make_celery(harness.ctx.settings)
    yield app
    app.close()


def test_storage_outage_in_a_batch_hands_every_mate_back_to_the_queue(
    harness: Harness, producer: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = harness.submit()
    mates = []
    for _ in range(2):
        mate = harness.submit()
        enqueue_restore(producer, harness.ctx.settings, mate.id)
        mates.append(mate.id)
    harness.ctx.batcher = make_batcher(harness, worker_id="w-batch", max_size=3)

    def redis_gone(*_args: object) -> list[str]:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(lifecycle, "run_executions", redis_gone)
    with pytest.raises(redis.ConnectionError):
        lifecycle.run_job(harness.ctx, first.id)
    # The first job's message is requeued by the task (Reject); the mates' must not vanish with the batch.
    assert sorted(job_id_of(m) for m in harness.client.lrange("gpu", 0, -1)) == sorted(mates)
    assert harness.client.hlen(PARKED_PREFIX + "w-batch") == 0


def test_held_set_of_a_worker_expires(harness: Harness) -> None:
    ownership(harness, "w-ttl", []).claim(harness.submit().id)
    assert 0 < harness.client.ttl(HELD_PREFIX + "w-ttl") <= 3600


# Fleet-wide bookkeeping bounded by the number of workers (pruned by heartbeats and reaping), not by jobs.
# The outbox holds queued jobs only (bounded by max_queue_depth; claims and the sweep empty it).
_FLEET_KEYS = {b"diffbir:workers", b"diffbir:holders", b"diffbir:batch:parked_workers", b"diffbir:outbox"}


def test_every_per_job_key_the_service_writes_expires(harness: Harness) -> None:
    ctx = harness.ctx
    ctx.ownership = ownership(harness, "w-keys", [])
    succeeded, failed, running = (
        harness.submit(),
        harness.submit(data=b"\x89PNG\r\n\x1a\nbroken"),
        harness.submit(),
    )
    assert lifecycle.run_job(ctx, succeeded.id) == "succeeded"
    assert lifecycle.run_job(ctx, failed.id) == "failed"
    ctx.ownership.claim(running.id)
    ctx.store.request_cancel(running.id)  # sets the cancel flag of a running job
    asyncio.run(_claim_idempotency(harness, IdempotencyRecord(job_id=succeeded.id, fingerprint="f")))
    ctx.workers.beat("w-keys")
    keys = set(harness.client.scan_iter("diffbir:*"))
    assert {k.split(b":")[1] for k in keys} >= {b"job", b"blob", b"cancel", b"idem", b"owner", b"held"}
    unbounded = [k for k in keys - _FLEET_KEYS if harness.client.ttl(k) < 0]
    assert unbounded == []


async def _claim_idempotency(harness: Harness, record: IdempotencyRecord) -> None:
    client = aioredis.Redis.from_url(harness.redis_url)
    try:
        assert await IdempotencyStore(client, 3600).claim("k_owner", "order-1", record) is None
    finally:
        await client.aclose()
