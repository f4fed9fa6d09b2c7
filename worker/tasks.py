"""The Celery task ``diffbir.restore(job_id)``: check the id, run the job, and requeue a job whose outcome
could not be recorded. The job record, not Celery, carries the outcome (``worker.lifecycle``)."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject

from common.jobs import is_valid_job_id
from worker import runner
from worker.celery_app import app, publish_restore
from worker.config import get_worker_settings
from worker.failures import is_transient
from worker.lifecycle import run_job

log = logging.getLogger(__name__)


@app.task(
    name=get_worker_settings().task_name,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def restore(self: Any, job_id: str) -> str:
    """Celery entry point (args ``[job_id]``); returns the job's final status, for logs only."""
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        log.error("dropping a task with an invalid job id: %r", job_id)
        return "invalid"
    try:
        return run_job(runner.context(publish_restore), job_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The outcome could not be recorded (Redis/S3 away beyond the retries). Acking would leave the job
        # 'running' forever; requeue instead (or, if the broker is gone too, leave it unacked until the
        # visibility timeout) so it runs again, bounded by worker_max_attempts.
        log.error("job %s: requeued after an unrecorded storage failure: %s", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
