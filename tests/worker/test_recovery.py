"""Fast recovery of a dead worker's jobs (job ownership + requeue on heartbeat), against a real Redis."""

from __future__ import annotations

import time

from common.jobs import JobStatus, ResultInfo, result_url
from common.keys import HELD_PREFIX, HOLDERS_KEY, OWNER_PREFIX
from tests.worker.conftest import Harness
from worker.lifecycle import run_job
from worker.recovery import Ownership


def ownership(harness: Harness, worker_id: str, published: list[str]) -> Ownership:
    return Ownership(harness.client, harness.ctx.store, worker_id, 3600, publish=published.append)


def test_claim_and_release_track_the_owner(harness: Harness) -> None:
    mine = ownership(harness, "w1", [])
    mine.claim("j_a")
    assert harness.client.get(OWNER_PREFIX + "j_a") == b"w1"
    assert harness.client.smembers(HELD_PREFIX + "w1") == {b"j_a"}
    ownership(harness, "w2", []).claim("j_a")  # taken over after a redelivery
    mine.release("j_a")  # must not erase the new owner
    assert harness.client.get(OWNER_PREFIX + "j_a") == b"w2"
    assert harness.client.scard(HELD_PREFIX + "w1") == 0


def test_live_owner_needs_a_fresh_heartbeat(harness: Harness) -> None:
    other = ownership(harness, "w-other", [])
    other.claim("j_b")
    me = ownership(harness, "w-me", [])
    harness.ctx.workers.beat("w-other", now=1000.0)
    assert me.live_owner("j_b", max_age_s=10, now=1005.0) == "w-other"
    assert me.live_owner("j_b", max_age_s=10, now=1011.0) is None
    assert other.live_owner("j_b", max_age_s=10, now=1005.0) is None  # never "someone else" for itself


def test_dead_workers_running_jobs_are_published_again(harness: Harness) -> None:
    running, finished = harness.submit(), harness.submit()
    for job in (running, finished):
        harness.ctx.store.mark_running(job.id)
    harness.ctx.store.succeed(finished.id, _result(finished.id), {})
    dead = ownership(harness, "w-dead", [])
    dead.claim(running.id)
    dead.claim(finished.id)
    alive_jobs = ownership(harness, "w-alive", [])
    alive_jobs.claim("j_alive_job")
    now = time.time()
    harness.ctx.workers.beat("w-dead", now=now - 120)
    harness.ctx.workers.beat("w-alive", now=now)
    published: list[str] = []
    reaper = ownership(harness, "w-reaper", published)
    assert reaper.requeue_from_dead_workers(max_age_s=60, now=now) == 1
    assert published == [running.id]
    assert harness.client.smembers(HOLDERS_KEY) == {b"w-alive"}
    assert reaper.requeue_from_dead_workers(max_age_s=60, now=now) == 0  # done once


def test_duplicate_delivery_of_a_job_on_a_live_worker_is_skipped(harness: Harness) -> None:
    harness.ctx.ownership = ownership(harness, harness.ctx.settings.worker_id, [])
    job = harness.submit()
    harness.ctx.store.mark_running(job.id)
    ownership(harness, "w-busy", []).claim(job.id)
    harness.ctx.workers.beat("w-busy")
    assert run_job(harness.ctx, job.id) == "skipped"
    assert harness.pipeline.calls == 0
    assert harness.ctx.store.get(job.id).attempts == 1  # type: ignore[union-attr]


def test_job_of_a_dead_owner_runs_again_and_ownership_is_released(harness: Harness) -> None:
    harness.ctx.ownership = ownership(harness, harness.ctx.settings.worker_id, [])
    job = harness.submit()
    harness.ctx.store.mark_running(job.id)
    ownership(harness, "w-gone", []).claim(job.id)
    harness.ctx.workers.beat("w-gone", now=time.time() - 3600)
    assert run_job(harness.ctx, job.id) == "succeeded"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.succeeded and done.attempts == 2
    assert not harness.client.exists(OWNER_PREFIX + job.id)
    assert harness.client.scard(HELD_PREFIX + harness.ctx.settings.worker_id) == 0


def _result(job_id: str) -> ResultInfo:
    return ResultInfo(url=result_url(job_id), content_type="image/png", width=1, height=1)
