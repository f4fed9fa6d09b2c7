"""A job's lifecycle on the worker (worker.lifecycle.run_job) against a real Redis: start, skip, finish."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from common.blobstore import BlobNotFoundError, input_key, result_key
from common.jobs import ErrorCode, JobStatus
from tests.worker.conftest import Harness, sample
from worker.lifecycle import run_job


def test_success_stores_result_and_timings(harness: Harness) -> None:
    job = harness.submit(output_format="jpeg", upscale=2, steps=5, seed=7)
    assert run_job(harness.ctx, job.id) == "succeeded"

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


def test_finished_or_canceled_jobs_are_skipped(harness: Harness) -> None:
    job = harness.submit()
    assert run_job(harness.ctx, job.id) == "succeeded"
    assert run_job(harness.ctx, job.id) == "skipped"  # duplicate delivery
    queued = harness.submit()
    harness.ctx.store.request_cancel(queued.id)
    assert run_job(harness.ctx, queued.id) == "skipped"
    assert harness.ctx.store.get(queued.id).status is JobStatus.canceled  # type: ignore[union-attr]
    assert harness.pipeline.calls == 1
    assert run_job(harness.ctx, "j_doesnotexist000000000") == "skipped"


def test_redelivered_job_restarts_and_counts_attempts(harness: Harness) -> None:
    job = harness.submit()
    harness.ctx.store.mark_running(job.id)  # a worker took it, then died
    harness.ctx.store.set_progress(job.id, "sampler", 3, 5)
    assert run_job(harness.ctx, job.id) == "succeeded"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.attempts == 2 and done.status is JobStatus.succeeded
    assert sample(harness, "diffbir_worker_redeliveries_total") == 1


def test_job_lost_too_often_ends_worker_lost(harness: Harness) -> None:
    job = harness.submit()
    for _ in range(harness.ctx.settings.worker_max_attempts):
        harness.ctx.store.mark_running(job.id)
    assert run_job(harness.ctx, job.id) == "skipped"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is ErrorCode.worker_lost
    assert harness.pipeline.calls == 0
