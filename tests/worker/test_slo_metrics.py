"""The worker's side of the job SLO: turnaround from acceptance to success, and outcomes exported at 0."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import generate_latest

from common.jobs import ErrorCode
from common.keys import job_key
from model.errors import InvalidInputError
from tests.worker.conftest import Harness, sample
from worker import lifecycle
from worker.metrics import WorkerMetrics


def test_turnaround_counts_from_acceptance_for_succeeded_jobs_only(harness: Harness) -> None:
    on_time = harness.submit()
    late = harness.submit()
    record = harness.ctx.store.get(late.id)
    assert record is not None
    record.created_at -= timedelta(seconds=700)  # accepted 700 s ago: waited in the queue past the deadline
    harness.client.set(job_key(late.id), record.to_redis(), keepttl=True)
    assert lifecycle.run_job(harness.ctx, on_time.id) == "succeeded"
    assert lifecycle.run_job(harness.ctx, late.id) == "succeeded"
    failed = harness.submit()
    harness.pipeline.raise_at_step, harness.pipeline.error = 1, InvalidInputError("bad")
    assert lifecycle.run_job(harness.ctx, failed.id) == "failed"

    assert sample(harness, "diffbir_worker_job_turnaround_seconds_count") == 2
    assert sample(harness, "diffbir_worker_job_turnaround_seconds_bucket", le="600.0") == 1
    assert sample(harness, "diffbir_worker_job_turnaround_seconds_bucket", le="900.0") == 2
    assert 700 <= sample(harness, "diffbir_worker_job_turnaround_seconds_sum") < 760


def test_every_outcome_is_exported_before_the_first_job() -> None:
    text = generate_latest(WorkerMetrics().registry).decode()
    assert 'diffbir_worker_jobs_total{reason="",status="succeeded"} 0.0' in text
    assert 'diffbir_worker_jobs_total{reason="canceled",status="canceled"} 0.0' in text
    for code in ErrorCode:
        if code is not ErrorCode.canceled:
            assert f'diffbir_worker_jobs_total{{reason="{code.value}",status="failed"}} 0.0' in text
