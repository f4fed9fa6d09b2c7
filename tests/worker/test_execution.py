"""A running job's hooks (worker.execution): throttled progress, the cancel flag, the soft and hard limits."""

from __future__ import annotations

import time

from common.jobs import ErrorCode, JobStatus
from tests.worker.conftest import Harness
from worker.execution import EXIT_HARD_TIME_LIMIT
from worker.lifecycle import run_job


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
    assert run_job(harness.ctx, job.id) == "succeeded"
    elapsed = time.monotonic() - started
    interval = harness.ctx.settings.worker_progress_interval_s
    # One "starting" write, then at most one per interval (+ stage changes): far fewer than 60 steps.
    assert len(calls) <= 3 + elapsed / interval, calls
    assert any(stage == "sampler" for stage, _ in calls)


def test_running_job_stops_at_next_step_when_canceled(harness: Harness) -> None:
    job = harness.submit(steps=50)
    harness.pipeline.step_sleep_s = 0.02

    def cancel_at(step: int) -> None:
        if step == 3:
            harness.ctx.store.request_cancel(job.id)

    harness.pipeline.on_step = cancel_at
    assert run_job(harness.ctx, job.id) == "canceled"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.canceled
    assert done.error is not None and done.error.code is ErrorCode.canceled
    # The cancel flag is read at most every progress interval (50 ms = ~3 steps of 20 ms).
    assert harness.pipeline.steps_run <= 3 + 4
    assert not harness.client.exists(f"diffbir:cancel:{job.id}")


def test_soft_time_limit_is_enforced_at_the_next_step(harness: Harness) -> None:
    harness.ctx = harness.make_ctx(task_soft_time_limit_s=1, task_hard_time_limit_s=30)
    harness.pipeline.step_sleep_s = 0.1
    job = harness.submit(steps=100)
    assert run_job(harness.ctx, job.id) == "failed"
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
    run_job(harness.ctx, job.id)
    assert harness.exits == [EXIT_HARD_TIME_LIMIT]
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None and done.error.code is ErrorCode.timeout
