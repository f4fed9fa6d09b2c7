"""The Celery task itself (worker.tasks.restore): junk ids are dropped, unrecordable outcomes requeued."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import Reject

from common.jobs import JobStatus
from tests.worker.conftest import FlakyBlobs, Harness
from worker import runner, tasks


def test_invalid_job_ids_are_dropped_without_touching_redis() -> None:
    assert tasks.restore.run("../../etc/passwd") == "invalid"
    assert tasks.restore.run(123) == "invalid"


def test_unrecordable_outcome_requeues_instead_of_acking(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis gone for good mid-finish: the task rejects with requeue, so the job can never stay 'running'."""
    harness.ctx = harness.make_ctx(worker_finish_retry_s=0)  # past the finish deadline at once
    job = harness.submit()
    harness.ctx.blobs = FlakyBlobs(harness.ctx.blobs, failures=100)  # type: ignore[assignment]

    def redis_down(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(harness.ctx.store, "fail", redis_down)
    monkeypatch.setattr(runner, "_context", harness.ctx)
    with pytest.raises(Reject) as info:
        tasks.restore.run(job.id)
    assert info.value.requeue is True
    assert harness.ctx.store.get(job.id).status is JobStatus.running  # type: ignore[union-attr]
