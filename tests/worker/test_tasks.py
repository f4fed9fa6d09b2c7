"""The job lifecycle on the worker (worker.tasks.run_job) against a real Redis."""

from __future__ import annotations

import io
import json
import time

import pytest
import redis
import torch
from celery.exceptions import Reject, SoftTimeLimitExceeded
from PIL import Image

from common.blobstore import BlobNotFoundError, input_key, result_key
from common.jobs import ErrorCode, JobStatus
from common.webhooks import SIGNATURE_HEADER, verify_signature
from model.errors import InvalidInputError
from tests.worker.conftest import Harness, Receiver, sample
from worker import runner, tasks


def test_success_stores_result_and_timings(harness: Harness) -> None:
    job = harness.submit(output_format="jpeg", upscale=2, steps=5, seed=7)
    assert tasks.run_job(harness.ctx, job.id) == "succeeded"

    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.succeeded
    assert done.attempts == 1 and done.error is None
    assert done.result is not None
    assert (done.result.width, done.result.height, done.result.content_type) == (32, 24, "image/jpeg")
    assert done.progress is not None and done.progress.fraction == 1.0
    for name in ("decode", "stage1", "sampler", "encode_output", "model_total", "total"):
        assert done.timings[name] >= 0.0, name
    data = harness.ctx.blobs.get(result_key(job.id, "jpeg"))
    assert done.result.bytes == len(data)
    assert Image.open(io.BytesIO(data)).size == (32, 24)
    with pytest.raises(BlobNotFoundError):  # the input of a finished job is dropped
        harness.ctx.blobs.get(input_key(job.id))
    # Params reach the model options by name; service-only fields do not.
    options = harness.pipeline.seen_options[0]
    assert (options.steps, options.seed, options.upscale) == (5, 7, 2.0)
    assert not hasattr(options, "output_format") and not hasattr(options, "callback_url")
    assert sample(harness, "diffbir_worker_jobs_total", status="succeeded", reason="") == 1
    assert sample(harness, "diffbir_worker_queue_wait_seconds_count") == 1


def test_progress_writes_are_throttled(harness: Harness) -> None:
    calls: list[tuple[str, int]] = []
    original = harness.ctx.store.set_progress

    def counting(job_id: str, stage: str, step: int, total: int, attempt: int | None = None) -> bool:
        calls.append((stage, step))
        return original(job_id, stage, step, total, attempt)

    harness.ctx.store.set_progress = counting  # type: ignore[method-assign]
    harness.pipeline.step_sleep_s = 0.005
    job = harness.submit(steps=60)  # ~0.3 s of steps at 5 ms
    started = time.monotonic()
    assert tasks.run_job(harness.ctx, job.id) == "succeeded"
    elapsed = time.monotonic() - started
    interval = harness.ctx.settings.worker_progress_interval_s
    # One "starting" write, then at most one per interval (+ stage changes): far fewer than 60 steps.
    assert len(calls) <= 3 + elapsed / interval, calls
    assert any(stage == "sampler" for stage, _ in calls)


def test_finished_or_canceled_jobs_are_skipped(harness: Harness) -> None:
    job = harness.submit()
    assert tasks.run_job(harness.ctx, job.id) == "succeeded"
    assert tasks.run_job(harness.ctx, job.id) == "skipped"  # duplicate delivery
    queued = harness.submit()
    harness.ctx.store.request_cancel(queued.id)
    assert tasks.run_job(harness.ctx, queued.id) == "skipped"
    assert harness.ctx.store.get(queued.id).status is JobStatus.canceled  # type: ignore[union-attr]
    assert harness.pipeline.calls == 1
    assert tasks.run_job(harness.ctx, "j_doesnotexist000000000") == "skipped"


def test_running_job_stops_at_next_step_when_canceled(harness: Harness) -> None:
    job = harness.submit(steps=50)
    harness.pipeline.step_sleep_s = 0.02

    def cancel_at(step: int) -> None:
        if step == 3:
            harness.ctx.store.request_cancel(job.id)

    harness.pipeline.on_step = cancel_at
    assert tasks.run_job(harness.ctx, job.id) == "canceled"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.canceled
    assert done.error is not None and done.error.code is ErrorCode.canceled
    # The cancel flag is read at most every progress interval (50 ms = ~3 steps of 20 ms).
    assert harness.pipeline.steps_run <= 3 + 4
    assert not harness.client.exists(f"diffbir:cancel:{job.id}")


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"not an image at all", None, ErrorCode.bad_input),
        (None, InvalidInputError("image too small for the model"), ErrorCode.bad_input),
        (
            None,
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            ErrorCode.out_of_memory,
        ),
        (None, SoftTimeLimitExceeded("soft"), ErrorCode.timeout),
        (None, KeyError("secret internals"), ErrorCode.internal),
    ],
)
def test_failures_map_to_reason_codes_and_keep_input(
    harness: Harness, data: bytes | None, error: BaseException | None, code: ErrorCode
) -> None:
    job = harness.submit(data=data)
    harness.pipeline.raise_at_step, harness.pipeline.error = 1, error
    assert tasks.run_job(harness.ctx, job.id) == "failed"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is code
    assert "secret internals" not in done.error.message
    assert harness.ctx.blobs.get(input_key(job.id))  # kept for a retry
    assert sample(harness, "diffbir_worker_jobs_total", status="failed", reason=code.value) == 1


def test_soft_time_limit_is_enforced_at_the_next_step(harness: Harness) -> None:
    harness.ctx = harness.make_ctx(task_soft_time_limit_s=1, task_hard_time_limit_s=30)
    harness.pipeline.step_sleep_s = 0.1
    job = harness.submit(steps=100)
    assert tasks.run_job(harness.ctx, job.id) == "failed"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.error is not None and done.error.code is ErrorCode.timeout
    assert harness.pipeline.steps_run < 20
    assert harness.exits == []  # the hard limit never fired


def test_hard_time_limit_fails_the_job_and_exits_the_process(harness: Harness) -> None:
    harness.ctx = harness.make_ctx(task_soft_time_limit_s=1, task_hard_time_limit_s=2)
    job = harness.submit(steps=1)

    def stall(step: int) -> None:  # a kernel that never returns to the step loop
        deadline = time.monotonic() + 5
        while not harness.exits and time.monotonic() < deadline:
            time.sleep(0.02)

    harness.pipeline.on_step = stall
    tasks.run_job(harness.ctx, job.id)
    assert harness.exits == [tasks.EXIT_HARD_TIME_LIMIT]
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is ErrorCode.timeout


def test_redelivered_job_restarts_and_counts_attempts(harness: Harness) -> None:
    job = harness.submit()
    harness.ctx.store.mark_running(job.id)  # a worker took it, then died
    harness.ctx.store.set_progress(job.id, "sampler", 3, 5)
    assert tasks.run_job(harness.ctx, job.id) == "succeeded"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.attempts == 2 and done.status is JobStatus.succeeded
    assert sample(harness, "diffbir_worker_redeliveries_total") == 1


def test_job_lost_too_often_ends_worker_lost(harness: Harness) -> None:
    job = harness.submit()
    for _ in range(harness.ctx.settings.worker_max_attempts):
        harness.ctx.store.mark_running(job.id)
    assert tasks.run_job(harness.ctx, job.id) == "skipped"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is ErrorCode.worker_lost
    assert harness.pipeline.calls == 0


class FlakyBlobs:
    """Wraps a blob store; the first ``failures`` calls of ``put`` raise a connection error."""

    def __init__(self, inner: object, failures: int) -> None:
        self.inner, self.failures, self.put_calls = inner, failures, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.put_calls += 1
        if self.put_calls <= self.failures:
            raise redis.ConnectionError("connection reset by peer")
        self.inner.put(key, data, content_type)  # type: ignore[attr-defined]


def test_transient_storage_errors_are_retried(harness: Harness) -> None:
    flaky = FlakyBlobs(harness.ctx.blobs, failures=2)
    job = harness.submit()
    harness.ctx.blobs = flaky  # type: ignore[assignment]
    assert tasks.run_job(harness.ctx, job.id) == "succeeded"
    assert flaky.put_calls == 3


def test_storage_down_after_retries_fails_internal(harness: Harness) -> None:
    flaky = FlakyBlobs(harness.ctx.blobs, failures=100)
    job = harness.submit()
    harness.ctx.blobs = flaky  # type: ignore[assignment]
    assert tasks.run_job(harness.ctx, job.id) == "failed"
    assert flaky.put_calls == harness.ctx.settings.worker_transient_retries + 1
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.error is not None and done.error.code is ErrorCode.internal
    assert "storage unavailable" in done.error.message


def test_webhook_is_signed_and_carries_the_final_job(harness: Harness) -> None:
    receiver = Receiver()
    try:
        harness.ctx = harness.make_ctx(webhook_secret="whsec", webhook_allow_private=True)
        job = harness.submit(callback_url=receiver.url)
        assert tasks.run_job(harness.ctx, job.id) == "succeeded"
        harness.ctx.webhook_pool.shutdown(wait=True)
        headers, body = receiver.requests[0]
        assert verify_signature(body, headers[SIGNATURE_HEADER], "whsec")
        payload = json.loads(body)
        assert payload["event"] == "job.succeeded"
        assert payload["job"]["id"] == job.id and payload["job"]["status"] == "succeeded"
        assert "owner" not in payload["job"]
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="delivered") == 1
    finally:
        receiver.close()


def test_webhook_to_private_target_is_refused_by_default(harness: Harness) -> None:
    receiver = Receiver()
    try:
        job = harness.submit(callback_url=receiver.url)
        assert tasks.run_job(harness.ctx, job.id) == "succeeded"
        harness.ctx.webhook_pool.shutdown(wait=True)
        assert receiver.requests == []
        assert sample(harness, "diffbir_worker_webhook_deliveries_total", outcome="failed") == 1
    finally:
        receiver.close()


def test_invalid_job_ids_are_dropped_without_touching_redis() -> None:
    assert tasks.restore.run("../../etc/passwd") == "invalid"
    assert tasks.restore.run(123) == "invalid"


def test_unrecordable_outcome_requeues_instead_of_acking(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis gone for good mid-finish: the task rejects with requeue, so the job can never stay 'running'."""
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
