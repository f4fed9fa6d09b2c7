"""Fast recovery of a dead worker's jobs (atomic claim, lease, hand-back to the front) on a real Redis."""

from __future__ import annotations

import threading

from celery import Celery

from common.jobs import JobStatus, ResultInfo, result_url
from common.keys import HELD_PREFIX, HOLDERS_KEY, OUTBOX_KEY, OWNER_PREFIX
from common.queue import enqueue_restore, enqueue_restore_front, make_celery
from tests.worker.conftest import Harness
from worker.batching import job_id_of
from worker.lifecycle import run_job
from worker.recovery import Ownership


def ownership(harness: Harness, worker_id: str, published: list[str]) -> Ownership:
    return Ownership(harness.client, harness.ctx.store, worker_id, 3600, publish=published.append)


def test_claim_marks_running_and_records_the_owner_in_one_step(harness: Harness) -> None:
    job = harness.submit()
    assert harness.client.zscore(OUTBOX_KEY, job.id) is not None  # created with its outbox entry
    claim = ownership(harness, "w1", []).claim(job.id)
    assert claim.job is not None and claim.job.status is JobStatus.running and claim.job.attempts == 1
    stored = harness.ctx.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.running
    assert harness.client.get(OWNER_PREFIX + job.id) == b"w1"
    assert harness.client.smembers(HELD_PREFIX + "w1") == {job.id.encode()}
    assert harness.client.sismember(HOLDERS_KEY, "w1")
    assert harness.client.zscore(OUTBOX_KEY, job.id) is None  # claimed: no message needed any more


def test_claim_is_all_or_nothing_under_a_concurrent_writer(harness: Harness) -> None:
    """Two workers racing for one delivered job: exactly one claims it, and the owner is the claimer."""
    job = harness.submit()
    harness.ctx.workers.renew_lease("w-a", 60)
    harness.ctx.workers.renew_lease("w-b", 60)
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def race(worker_id: str) -> None:
        barrier.wait()
        results[worker_id] = ownership(harness, worker_id, []).claim(job.id).job

    threads = [threading.Thread(target=race, args=(w,)) for w in ("w-a", "w-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w, claimed in results.items() if claimed is not None]
    assert len(winners) == 1
    assert harness.client.get(OWNER_PREFIX + job.id) == winners[0].encode()
    assert harness.ctx.store.get(job.id).attempts == 1  # type: ignore[union-attr]


def test_release_never_erases_a_newer_owner(harness: Harness) -> None:
    job = harness.submit()
    mine = ownership(harness, "w1", [])
    mine.claim(job.id)
    assert ownership(harness, "w2", []).claim(job.id).job is not None  # w1 has no lease: taken over
    mine.release(job.id)
    assert harness.client.get(OWNER_PREFIX + job.id) == b"w2"
    assert harness.client.scard(HELD_PREFIX + "w1") == 0


def test_claim_of_a_job_running_on_a_live_lease_is_refused(harness: Harness) -> None:
    job = harness.submit()
    ownership(harness, "w-other", []).claim(job.id)
    harness.ctx.workers.renew_lease("w-other", 60)
    refused = ownership(harness, "w-me", []).claim(job.id)
    assert refused.job is None and "w-other" in refused.why
    harness.ctx.workers.drop_lease("w-other")  # its lease lapsed: the job is up for grabs
    assert ownership(harness, "w-me", []).claim(job.id).job is not None


def test_dead_workers_running_jobs_are_handed_back(harness: Harness) -> None:
    running, finished, alive_job = harness.submit(), harness.submit(), harness.submit()
    dead = ownership(harness, "w-dead", [])
    dead.claim(running.id)
    dead.claim(finished.id)
    harness.ctx.store.succeed(finished.id, _result(finished.id), {})
    ownership(harness, "w-alive", []).claim(alive_job.id)
    harness.ctx.workers.renew_lease("w-alive", 60)  # w-dead never renewed: its lease is gone
    published: list[str] = []
    reaper = ownership(harness, "w-reaper", published)
    assert reaper.requeue_from_dead_workers() == 1
    assert published == [running.id]
    assert harness.client.smembers(HOLDERS_KEY) == {b"w-alive"}
    assert not harness.client.exists(OWNER_PREFIX + running.id)
    # In the outbox until claimed: if the publish is lost, the outbox sweep publishes it again.
    assert harness.client.zscore(OUTBOX_KEY, running.id) is not None
    assert harness.client.zscore(OUTBOX_KEY, finished.id) is None
    assert reaper.requeue_from_dead_workers() == 0  # done once


def test_hand_back_all_lets_go_of_every_held_job(harness: Harness) -> None:
    jobs = [harness.submit(), harness.submit()]
    published: list[str] = []
    me = ownership(harness, "w-leaving", published)
    for job in jobs:
        me.claim(job.id)
    assert me.hand_back_all() == 2
    assert sorted(published) == sorted(j.id for j in jobs)
    assert harness.client.scard(HELD_PREFIX + "w-leaving") == 0
    # The next delivery claims it straight away (attempt 2), nobody waits for a lease to lapse.
    assert ownership(harness, "w-next", []).claim(jobs[0].id).job.attempts == 2  # type: ignore[union-attr]


def test_requeued_job_goes_to_the_front_of_the_queue(harness: Harness) -> None:
    app: Celery = make_celery(harness.ctx.settings)
    try:
        waiting = [harness.submit().id for _ in range(3)]
        for job_id in waiting:
            enqueue_restore(app, harness.ctx.settings, job_id)
        lost = harness.submit().id
        assert enqueue_restore_front(app, harness.ctx.settings, harness.client, lost)
        # kombu BRPOPs: the last element of the list is the next message a worker takes.
        order = [job_id_of(m) for m in harness.client.lrange("gpu", 0, -1)]
        assert order[-1] == lost
        assert order[:-1] == list(reversed(waiting))
    finally:
        app.close()


def test_duplicate_delivery_of_a_job_on_a_live_worker_is_skipped(harness: Harness) -> None:
    harness.ctx.ownership = ownership(harness, harness.ctx.settings.worker_id, [])
    job = harness.submit()
    ownership(harness, "w-busy", []).claim(job.id)
    harness.ctx.workers.renew_lease("w-busy", 60)
    assert run_job(harness.ctx, job.id) == "skipped"
    assert harness.pipeline.calls == 0
    assert harness.ctx.store.get(job.id).attempts == 1  # type: ignore[union-attr]


def test_job_of_a_dead_owner_runs_again_and_ownership_is_released(harness: Harness) -> None:
    harness.ctx.ownership = ownership(harness, harness.ctx.settings.worker_id, [])
    job = harness.submit()
    ownership(harness, "w-gone", []).claim(job.id)  # no lease: w-gone is dead
    assert run_job(harness.ctx, job.id) == "succeeded"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.succeeded and done.attempts == 2
    assert not harness.client.exists(OWNER_PREFIX + job.id)
    assert harness.client.scard(HELD_PREFIX + harness.ctx.settings.worker_id) == 0


def _result(job_id: str) -> ResultInfo:
    return ResultInfo(url=result_url(job_id), content_type="image/png", width=1, height=1)
