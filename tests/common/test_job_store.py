"""Job records and their transitions on a real Redis (common.job_store), and the job id format."""

from __future__ import annotations

import threading

import pytest
import redis

from common.errors import JobStateError
from common.job_store import JobStore
from common.jobs import ErrorCode, InputInfo, Job, JobStatus, ResultInfo, is_valid_job_id, new_job_id, utcnow
from common.keys import cancel_key, job_key
from common.params import RestoreParams
from common.settings import Settings


@pytest.fixture
def store(redis_client: redis.Redis, redis_url: str) -> JobStore:
    return JobStore(redis_client, Settings(redis_url=redis_url, job_ttl_seconds=600))


def make_job(owner: str = "o1") -> Job:
    return Job(
        id=new_job_id(),
        params=RestoreParams(),
        input=InputInfo(width=4, height=3, format="png", bytes=10),
        created_at=utcnow(),
        owner=owner,
    )


def test_ids_are_unguessable_and_checked() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_valid_job_id(i) and len(i) >= 24 for i in ids)
    assert not is_valid_job_id("j_../../etc") and not is_valid_job_id("x_" + "a" * 22)


def test_create_get_and_ttl(store: JobStore, redis_client: redis.Redis) -> None:
    job = make_job()
    store.create(job)
    assert store.get(job.id) == job
    assert 0 < redis_client.ttl(job_key(job.id)) <= 600
    with pytest.raises(JobStateError):
        store.create(job)
    assert store.get("j_missingmissingmissing") is None
    assert "owner" not in job.public_dict() and job.public_dict()["status"] == "queued"


def test_happy_lifecycle(store: JobStore) -> None:
    job = make_job()
    store.create(job)
    running = store.mark_running(job.id)
    assert running is not None and running.status is JobStatus.running and running.attempts == 1
    assert store.set_progress(job.id, "sampler", 5, 20)
    progress = store.get(job.id).progress
    assert progress is not None and progress.fraction == 0.25
    result = ResultInfo(url=f"/v1/jobs/{job.id}/result", content_type="image/png", width=8, height=6)
    done = store.succeed(job.id, result, {"sampler": 1.5})
    assert (
        done.status is JobStatus.succeeded
        and done.finished_at is not None
        and done.timings == {"sampler": 1.5}
    )
    assert not store.set_progress(job.id, "sampler", 6, 20)
    with pytest.raises(JobStateError):
        store.fail(job.id, ErrorCode.internal, "late")


def test_cancel_queued_never_runs(store: JobStore) -> None:
    job = make_job()
    store.create(job)
    canceled = store.request_cancel(job.id)
    assert canceled.status is JobStatus.canceled and canceled.error.code is ErrorCode.canceled
    assert store.mark_running(job.id) is None
    with pytest.raises(JobStateError):
        store.request_cancel(job.id)


def test_cancel_running_sets_flag(store: JobStore, redis_client: redis.Redis) -> None:
    job = make_job()
    store.create(job)
    store.mark_running(job.id)
    assert store.request_cancel(job.id).status is JobStatus.running
    assert store.is_cancel_requested(job.id)
    assert store.mark_canceled(job.id).status is JobStatus.canceled
    assert not redis_client.exists(cancel_key(job.id))  # flag cleared on a terminal status


def test_redelivery_counts_attempts(store: JobStore) -> None:
    job = make_job()
    store.create(job)
    store.mark_running(job.id)
    assert store.mark_running(job.id).attempts == 2


def test_cancel_and_finish_race_has_one_winner(store: JobStore) -> None:
    """Many concurrent cancel/finish pairs: exactly one transition wins each time."""
    result = ResultInfo(url="/r", content_type="image/png", width=1, height=1)
    for _ in range(20):
        job = make_job()
        store.create(job)
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def cancel(job_id: str = job.id, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            try:
                store.transition(
                    job_id, (JobStatus.queued,), lambda j: setattr(j, "status", JobStatus.canceled)
                )
                outcomes.append("canceled")
            except JobStateError:
                outcomes.append("lost")

        def start(job_id: str = job.id, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            outcomes.append("running" if store.mark_running(job_id) else "lost")

        threads = [threading.Thread(target=cancel), threading.Thread(target=start)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) in (["canceled", "lost"], ["lost", "running"])
        final = store.get(job.id)
        if final.status is JobStatus.running:
            store.succeed(job.id, result)
