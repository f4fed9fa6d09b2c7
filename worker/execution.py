"""Running jobs through the model: one attempt's clocks and pipeline hooks (throttled progress, the cancel
flag, the soft deadline), the hard-limit watchdog, and the model call (one ``restore`` or ``restore_batch``).

What the outcomes mean for the job record is ``worker.lifecycle``'s business; nothing here writes a status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import redis
from celery.exceptions import SoftTimeLimitExceeded

from common import imaging
from common.blobstore import input_key
from common.faults import fault_point
from common.jobs import ErrorCode, Job
from worker.context import WorkerContext
from worker.failures import with_retries
from worker.job_trace import JobTrace
from worker.throttle import Every, ProgressThrottle

if TYPE_CHECKING:
    from model.options import RestoreOptions, RestoreResult

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_HARD_TIME_LIMIT = 4  # the process exit code after the hard time limit fired


@dataclass
class Execution:
    """State of one attempt at one job: its clocks and timings, and the hooks the pipeline calls."""

    ctx: WorkerContext
    job: Job
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    _writes: ProgressThrottle = field(init=False)
    _cancel_reads: Every = field(init=False)
    _canceled: bool = False
    _last_step_at: float | None = None
    trace: JobTrace = field(init=False)

    def __post_init__(self) -> None:
        self.trace = JobTrace(self.job)
        interval = self.ctx.settings.worker_progress_interval_s
        self._writes = ProgressThrottle(interval)
        self._cancel_reads = Every(interval)

    @property
    def soft_deadline(self) -> float:
        return self.started + self.ctx.settings.task_soft_time_limit_s

    def progress(self, stage: str, step: int, total: int) -> None:
        """The pipeline's ``ProgressFn``: metrics every call, Redis when the throttle lets it through."""
        self.trace.stage(stage)
        now = time.monotonic()
        if stage == "sampler":
            if step >= 1:
                fault_point("mid_sampling")
            if self._last_step_at is not None and step > 0:
                self.ctx.metrics.sampler_step.observe(now - self._last_step_at)
            self._last_step_at = now
        if not self._writes.should_send(stage, now):
            return
        try:
            still_running = self.ctx.store.set_progress(self.job.id, stage, step, total, self.job.attempts)
        except redis.RedisError as exc:  # progress is best-effort; the job goes on while Redis is away
            log.debug("progress write for %s skipped: %s", self.job.id, exc)
            return
        if not still_running:
            # Someone else finished it, a newer attempt took it over, or it expired: stop wasting the GPU.
            self._canceled = True

    def should_cancel(self) -> bool:
        """The pipeline's ``CancelFn``: the job's cancel flag (throttled read) and the soft time limit."""
        now = time.monotonic()
        if now > self.soft_deadline:
            raise SoftTimeLimitExceeded(
                f"soft time limit of {self.ctx.settings.task_soft_time_limit_s}s exceeded"
            )
        if not self._canceled and self._cancel_reads.due(now):
            try:
                self._canceled = self.ctx.store.is_cancel_requested(self.job.id)
            except redis.RedisError as exc:
                log.debug("cancel check for %s skipped: %s", self.job.id, exc)
        return self._canceled

    def timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        try:
            with self.trace.step(name):
                return fn(*args)
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 6)


def start_hard_limit_watchdog(ctx: WorkerContext, jobs: list[Job]) -> threading.Timer:
    """Celery's solo pool has no hard time limit: fail the jobs, then end the process (it is restarted)."""
    limit = ctx.settings.task_hard_time_limit_s

    def fire() -> None:
        job_ids = [job.id for job in jobs]
        log.critical("jobs %s exceeded the hard time limit of %ss; failing them and exiting", job_ids, limit)
        for job in jobs:
            try:
                message = f"hard time limit of {limit}s exceeded"
                finished = ctx.store.fail(job.id, ErrorCode.timeout, message, None, job.attempts)
                if finished is not None:
                    ctx.metrics.jobs.labels(status="failed", reason=ErrorCode.timeout.value).inc()
            except Exception:
                log.exception("could not record the hard timeout of %s", job.id)
        ctx.exit_process(EXIT_HARD_TIME_LIMIT)

    timer = threading.Timer(limit, fire)
    timer.daemon = True
    timer.start()
    return timer


def prepare(ctx: WorkerContext, execution: Execution) -> tuple[np.ndarray, RestoreOptions]:
    """Fetch and decode the input, build the model options."""
    job = execution.job
    data = with_retries(ctx, ctx.blobs.get, input_key(job.id), what="fetch input")
    image = execution.timed("decode", _decode, ctx, data)
    return image, ctx.options_factory(**job.params.model_options())


def _decode(ctx: WorkerContext, data: bytes) -> np.ndarray:
    img = imaging.load_rgb(data, ctx.settings.max_input_pixels)
    return np.asarray(img, dtype=np.uint8)


Prepared = tuple[Execution, np.ndarray, "RestoreOptions"]


def run_model(ctx: WorkerContext, ready: list[Prepared]) -> list[RestoreResult | Exception]:
    """One model call for every prepared job; one outcome each (a result or the exception that ended it)."""
    if not ready:
        return []
    outcomes: list[RestoreResult | Exception]
    if len(ready) == 1:
        execution, image, options = ready[0]
        try:
            outcomes = [
                ctx.pipeline.restore(
                    image, options, progress=execution.progress, should_cancel=execution.should_cancel
                )
            ]
        except Exception as exc:
            outcomes = [exc]
    else:
        try:
            outcomes = list(
                ctx.pipeline.restore_batch(
                    [image for _, image, _ in ready],
                    [options for _, _, options in ready],
                    [e.progress for e, _, _ in ready],
                    [e.should_cancel for e, _, _ in ready],
                )
            )
        except Exception as exc:  # the whole call failed (e.g. OOM): every job shares the outcome
            outcomes = [exc] * len(ready)
    for execution, _, _ in ready:
        execution.trace.model_done()
    ctx.metrics.batch_size.observe(len(ready))
    return outcomes
