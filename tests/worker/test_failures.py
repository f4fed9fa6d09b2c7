"""Failures end jobs with one reason code each (worker.failures), transient storage errors are retried."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from common.blobstore import input_key
from common.jobs import ErrorCode, JobStatus
from model.errors import InvalidInputError, OutOfMemoryError
from tests.worker.conftest import FlakyBlobs, Harness, sample
from worker import loading
from worker.lifecycle import run_job


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"not an image at all", None, ErrorCode.bad_input),
        (None, InvalidInputError("image too small for the model"), ErrorCode.bad_input),
        (None, OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), ErrorCode.out_of_memory),
        (None, SoftTimeLimitExceeded("soft"), ErrorCode.timeout),
        (None, KeyError("secret internals"), ErrorCode.internal),
    ],
)
def test_failures_map_to_reason_codes_and_keep_input(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes | None,
    error: BaseException | None,
    code: ErrorCode,
) -> None:
    freed: list[bool] = []
    monkeypatch.setattr(loading, "free_device_memory", lambda: freed.append(True))
    job = harness.submit(data=data)
    harness.pipeline.raise_at_step, harness.pipeline.error = 1, error
    assert run_job(harness.ctx, job.id) == "failed"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is code
    assert "secret internals" not in done.error.message
    assert harness.ctx.blobs.get(input_key(job.id))  # kept for a retry
    assert sample(harness, "diffbir_worker_jobs_total", status="failed", reason=code.value) == 1
    assert freed == ([True] if code is ErrorCode.out_of_memory else [])  # the device cache is handed back


def test_transient_storage_errors_are_retried(harness: Harness) -> None:
    flaky = FlakyBlobs(harness.ctx.blobs, failures=2)
    job = harness.submit()
    harness.ctx.blobs = flaky  # type: ignore[assignment]
    assert run_job(harness.ctx, job.id) == "succeeded"
    assert flaky.put_calls == 3


def test_storage_down_past_the_finish_deadline_fails_internal(harness: Harness) -> None:
    harness.ctx = harness.make_ctx(worker_finish_retry_s=1.0)
    flaky = FlakyBlobs(harness.ctx.blobs, failures=10_000)
    job = harness.submit()
    harness.ctx.blobs = flaky  # type: ignore[assignment]
    started = time.monotonic()
    assert run_job(harness.ctx, job.id) == "failed"
    assert time.monotonic() - started >= 0.5  # kept the result and retried up to the deadline
    assert flaky.put_calls > harness.ctx.settings.worker_transient_retries + 1
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.error is not None and done.error.code is ErrorCode.internal
    assert "storage unavailable" in done.error.message


def test_finished_job_rides_out_an_outage_longer_than_the_call_retries(harness: Harness) -> None:
    """Storage away for more attempts than one call's retry budget, but back before the finish deadline."""
    harness.ctx = harness.make_ctx(worker_finish_retry_s=30)
    retries = harness.ctx.settings.worker_transient_retries
    flaky = FlakyBlobs(harness.ctx.blobs, failures=retries * 2)
    job = harness.submit()
    harness.ctx.blobs = flaky  # type: ignore[assignment]
    assert run_job(harness.ctx, job.id) == "succeeded"
    assert flaky.put_calls == retries * 2 + 1
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.result is not None and done.attempts == 1
