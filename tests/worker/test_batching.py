"""Micro-batching against a real Redis holding real Celery messages (published by the API's producer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from common.jobs import JobStatus
from common.keys import PARKED_PREFIX
from common.queue import enqueue_restore, make_celery, queue_depth
from tests.worker.conftest import Harness, png_bytes, sample
from worker.batching import Batcher, batch_key, job_id_of
from worker.lifecycle import run_job


@pytest.fixture
def producer(harness: Harness) -> Iterator[Celery]:
    app = make_celery(harness.ctx.settings)
    yield app
    app.close()


def make_batcher(
    harness: Harness, worker_id: str = "w-test", max_size: int = 4, wait: float = 0.02
) -> Batcher:
    s = harness.ctx.settings
    return Batcher(harness.client, harness.ctx.store, worker_id, s.queue_name, s.task_name, max_size, wait)


def enqueue(harness: Harness, producer: Celery, **params: Any) -> str:
    data = params.pop("data", None)
    job = harness.submit(data=data, **params)
    enqueue_restore(producer, harness.ctx.settings, job.id)
    return job.id


def test_job_id_is_read_from_a_real_celery_message(harness: Harness, producer: Celery) -> None:
    job_id = enqueue(harness, producer)
    raw = harness.client.lrange("gpu", 0, -1)
    assert [job_id_of(m) for m in raw] == [job_id]
    assert job_id_of(b"not json") is None
    assert job_id_of(b'{"headers": {}, "body": "W10="}') is None


def test_batch_key_ignores_seed_and_delivery_but_not_shape_or_settings(harness: Harness) -> None:
    a = harness.submit(seed=1, output_format="png")
    b = harness.submit(seed=2, output_format="webp")
    c = harness.submit(steps=7)
    assert batch_key(a) == batch_key(b) != batch_key(c)


def test_claims_matching_waiting_jobs_and_leaves_the_rest(harness: Harness, producer: Celery) -> None:
    first = harness.submit()
    mates = [enqueue(harness, producer) for _ in range(2)]
    other = enqueue(harness, producer, steps=9)  # different settings: not batchable
    batcher = make_batcher(harness)
    started = batcher.claim_mates(first, harness.ctx.store.mark_running)
    assert sorted(j.id for j in started) == sorted(mates)
    assert all(j.status is JobStatus.running for j in started)
    remaining = [job_id_of(m) for m in harness.client.lrange("gpu", 0, -1)]
    assert remaining == [other]
    assert set(harness.client.hkeys(PARKED_PREFIX + "w-test")) == {m.encode() for m in mates}
    for job_id in mates:
        batcher.release(job_id)
    assert harness.client.hlen(PARKED_PREFIX + "w-test") == 0


def test_batch_size_and_wait_are_bounded(harness: Harness, producer: Celery) -> None:
    first = harness.submit()
    for _ in range(5):
        enqueue(harness, producer)
    batcher = make_batcher(harness, max_size=3)
    assert len(batcher.claim_mates(first, harness.ctx.store.mark_running)) == 2
    assert queue_depth(harness.client, "gpu") == 3
    alone = harness.submit(steps=11)
    off = make_batcher(harness, max_size=1)
    assert off.claim_mates(alone, harness.ctx.store.mark_running) == []


def test_canceled_waiting_jobs_are_not_batched(harness: Harness, producer: Celery) -> None:
    first = harness.submit()
    mate = enqueue(harness, producer)
    harness.ctx.store.request_cancel(mate)
    batcher = make_batcher(harness)
    assert batcher.claim_mates(first, harness.ctx.store.mark_running) == []
    assert queue_depth(harness.client, "gpu") == 1  # left for the normal path, which skips it


def test_parked_jobs_of_a_dead_worker_go_back_to_the_queue(harness: Harness, producer: Celery) -> None:
    first = harness.submit()
    mate = enqueue(harness, producer)
    dead = make_batcher(harness, worker_id="w-dead")
    harness.ctx.workers.renew_lease("w-dead", ttl_s=60)
    assert [j.id for j in dead.claim_mates(first, harness.ctx.store.mark_running)] == [mate]
    assert queue_depth(harness.client, "gpu") == 0
    alive = make_batcher(harness, worker_id="w-alive")
    assert alive.recover_dead_workers() == 0  # its lease is alive
    harness.ctx.workers.drop_lease("w-dead")  # it stopped renewing: the lease lapsed
    assert alive.recover_dead_workers() == 1
    assert [job_id_of(m) for m in harness.client.lrange("gpu", 0, -1)] == [mate]
    assert not harness.client.exists(PARKED_PREFIX + "w-dead")
    # The redelivered message runs the job again (attempt 2), like any job of a lost worker.
    assert run_job(harness.ctx, mate) == "succeeded"
    assert harness.ctx.store.get(mate).attempts == 2  # type: ignore[union-attr]


def test_run_job_batches_mates_with_separate_outcomes(harness: Harness, producer: Celery) -> None:
    harness.ctx.batcher = make_batcher(harness, worker_id=harness.ctx.settings.worker_id)
    first = harness.submit(seed=1)
    good = enqueue(harness, producer, seed=2, output_format="webp")
    bad = enqueue(harness, producer, seed=3, data=png_bytes()[:40])  # same declared shape, corrupt bytes
    assert run_job(harness.ctx, first.id) == "succeeded"
    assert harness.pipeline.batches == [2]  # first + good ran in one model call; bad failed at decode
    store = harness.ctx.store
    assert store.get(good).status is JobStatus.succeeded  # type: ignore[union-attr]
    assert store.get(good).result.content_type == "image/webp"  # type: ignore[union-attr]
    failed = store.get(bad)
    assert failed is not None and failed.status is JobStatus.failed and failed.error.code == "bad_input"
    assert queue_depth(harness.client, "gpu") == 0
    assert harness.client.hlen(PARKED_PREFIX + harness.ctx.settings.worker_id) == 0
    assert sample(harness, "diffbir_worker_batch_size_sum") == 2


def test_claim_is_atomic_against_a_concurrent_pop(harness: Harness, producer: Celery) -> None:
    first = harness.submit()
    enqueue(harness, producer)
    raw = harness.client.lrange("gpu", 0, -1)[0]
    harness.client.rpop("gpu")  # another worker's BRPOP got it between our scan and our claim
    batcher = make_batcher(harness)
    claimed = batcher._claim(
        keys=["gpu", batcher.parked_key, "diffbir:batch:parked_workers"], args=[raw, "j_x", "w-test"]
    )
    assert claimed == 0 and not harness.client.exists(batcher.parked_key)
    assert isinstance(harness.client, redis.Redis)
    assert batcher.claim_mates(first, harness.ctx.store.mark_running) == []
