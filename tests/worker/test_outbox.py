"""The outbox: a queued job whose broker message was never published or got lost is published again (to the
front), against a real Redis holding real Celery messages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery

from common.keys import OUTBOX_KEY, OUTBOX_SWEEP_LOCK_KEY
from common.queue import enqueue_restore, enqueue_restore_front, make_celery
from tests.worker.conftest import Harness
from worker.batching import job_id_of
from worker.lifecycle import run_job
from worker.outbox import OutboxSweeper
from worker.recovery import Ownership

GRACE_S = 5.0


@pytest.fixture
def producer(harness: Harness) -> Iterator[Celery]:
    app = make_celery(harness.ctx.settings)
    yield app
    app.close()


def sweeper(harness: Harness, published: list[str], worker_id: str = "w-sweep") -> OutboxSweeper:
    return OutboxSweeper(
        harness.client, harness.ctx.store, "gpu", worker_id, published.append, grace_s=GRACE_S
    )


def later() -> float:
    return time.time() + GRACE_S + 1


def test_job_stored_but_never_published_is_published_again(harness: Harness, producer: Celery) -> None:
    """The API died between storing the job and publishing it (fault point ``after_store``)."""
    job = harness.submit()  # record + outbox entry, no message
    published: list[str] = []
    assert sweeper(harness, published).sweep(now=time.time()) == 0  # within the grace: maybe in flight
    harness.client.delete(OUTBOX_SWEEP_LOCK_KEY)
    assert sweeper(harness, published).sweep(now=later()) == 1
    assert published == [job.id]
    assert harness.client.zscore(OUTBOX_KEY, job.id) is not None  # until a worker claims it


def test_job_waiting_in_the_queue_is_left_alone(harness: Harness, producer: Celery) -> None:
    job = harness.submit()
    enqueue_restore(producer, harness.ctx.settings, job.id)
    published: list[str] = []
    now = later()
    assert sweeper(harness, published).sweep(now=now) == 0
    assert published == []
    assert harness.client.zscore(OUTBOX_KEY, job.id) == pytest.approx(now)  # looked at again a grace later


def test_message_popped_and_lost_before_the_claim_is_republished(harness: Harness, producer: Celery) -> None:
    """kombu pops a message before recording it as unacked: a worker dying in between loses the message."""
    job = harness.submit()
    enqueue_restore(producer, harness.ctx.settings, job.id)
    assert job_id_of(harness.client.rpop("gpu")) == job.id  # popped by a worker that then died
    published: list[str] = []
    assert sweeper(harness, published).sweep(now=later()) == 1
    assert published == [job.id]


def test_claimed_finished_and_expired_jobs_leave_the_outbox(harness: Harness) -> None:
    claimed, canceled, expired = harness.submit(), harness.submit(), harness.submit()
    Ownership(harness.client, harness.ctx.store, "w1", 3600, publish=lambda _: None).claim(claimed.id)
    harness.ctx.store.request_cancel(canceled.id)
    assert harness.client.zrange(OUTBOX_KEY, 0, -1) == [expired.id.encode()]
    harness.client.delete(f"diffbir:job:{expired.id}")  # its record expired
    published: list[str] = []
    assert sweeper(harness, published).sweep(now=later()) == 0
    assert published == [] and harness.client.zcard(OUTBOX_KEY) == 0


def test_one_worker_sweeps_at_a_time(harness: Harness) -> None:
    harness.submit()
    first, second = [], []  # type: ignore[var-annotated]
    now = later()
    assert sweeper(harness, first, "w-a").sweep(now=now) == 1
    assert sweeper(harness, second, "w-b").sweep(now=now) == 0  # the lock is held for half the grace
    assert second == []


def test_republished_orphan_runs_once_and_succeeds(harness: Harness, producer: Celery) -> None:
    """End to end on the worker side: orphan -> sweep publishes at the front -> the delivery runs it."""
    waiting = harness.submit()
    enqueue_restore(producer, harness.ctx.settings, waiting.id)
    orphan = harness.submit()
    harness.client.zadd(OUTBOX_KEY, {waiting.id: time.time()})  # fresh: only the orphan is overdue

    def publish(job_id: str) -> None:
        enqueue_restore_front(producer, harness.ctx.settings, harness.client, job_id)

    swept = OutboxSweeper(harness.client, harness.ctx.store, "gpu", "w-sweep", publish, grace_s=GRACE_S)
    assert swept.sweep(now=later()) == 1
    next_up = job_id_of(harness.client.rpop("gpu"))
    assert next_up == orphan.id  # at the front, ahead of the job that was waiting
    assert run_job(harness.ctx, orphan.id) == "succeeded"
    assert harness.client.zscore(OUTBOX_KEY, orphan.id) is None
    assert run_job(harness.ctx, orphan.id) == "skipped"  # a duplicate message finds it finished
    assert harness.ctx.store.get(orphan.id).attempts == 1  # type: ignore[union-attr]
