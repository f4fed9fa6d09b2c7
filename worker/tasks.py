"""The ``diffbir.restore(job_id)`` task: one job's lifecycle on the worker.

    get job -> skip if finished/canceled -> mark running (attempts += 1) -> fetch input -> decode
    -> pipeline.restore (throttled progress, cancel flag, soft deadline) -> encode -> store result
    -> mark succeeded -> webhook

Delivery is at-least-once (late acks; a dead worker's message is redelivered after the broker visibility
timeout), so every step is safe to repeat: a finished job is skipped, a redelivered running job starts over
and counts ``attempts``, and a job delivered more than ``worker_max_attempts`` times ends ``failed`` with
``worker_lost`` instead of crash-looping. Failures map to one reason code each (see ``classify``); the input
blob is kept on failure so the job can be retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded
from PIL import Image

from common import imaging
from common.blobstore import BlobNotFoundError, input_key, result_key
from common.errors import JobStateError, UnprocessableError, UnsupportedMediaTypeError
from common.jobs import ErrorCode, Job, JobStatus, ResultInfo, is_valid_job_id, result_url
from common.webhooks import deliver
from model.errors import CanceledError, InvalidInputError
from worker import runner
from worker.celery_app import app
from worker.config import get_worker_settings
from worker.runner import EXIT_HARD_TIME_LIMIT, WorkerContext

log = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- error mapping


def is_transient(exc: BaseException) -> bool:
    """Connection-level failures of Redis or S3 that are worth retrying (not bad data, not bugs)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - botocore is a core dependency
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch  # already loaded by the pipeline; imported here to keep this module's import light

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def classify(exc: BaseException) -> ErrorCode:
    """One reason code per failure; anything unexplained is ``internal`` (and logged with a traceback)."""
    if isinstance(exc, CanceledError):
        return ErrorCode.canceled
    if isinstance(exc, SoftTimeLimitExceeded):
        return ErrorCode.timeout
    if isinstance(exc, InvalidInputError | UnprocessableError | UnsupportedMediaTypeError):
        return ErrorCode.bad_input
    if is_out_of_memory(exc):
        return ErrorCode.out_of_memory
    return ErrorCode.internal


def with_retries(ctx: WorkerContext, fn: Callable[..., T], *args: Any, what: str = "") -> T:
    """Call ``fn`` retrying transient connection errors with exponential backoff (bounded)."""
    retries = ctx.settings.worker_transient_retries
    delay = ctx.settings.worker_transient_backoff_s
    for attempt in range(retries + 1):
        try:
            return fn(*args)
        except Exception as exc:
            if not is_transient(exc) or attempt == retries:
                raise
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.2fs",
                what or fn.__name__,
                type(exc).__name__,
                exc,
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------- one execution


@dataclass
class Execution:
    """State of one attempt at one job: its clocks, progress throttle and cancel/deadline checks."""

    ctx: WorkerContext
    job: Job
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    _last_write: float = 0.0
    _last_stage: str = ""
    _last_cancel_check: float = 0.0
    _canceled: bool = False
    _last_step_at: float | None = None

    @property
    def soft_deadline(self) -> float:
        return self.started + self.ctx.settings.task_soft_time_limit_s

    def progress(self, stage: str, step: int, total: int) -> None:
        """Pipeline progress hook: metrics every call, Redis at most every ``worker_progress_interval_s``."""
        now = time.monotonic()
        if stage == "sampler":
            if self._last_step_at is not None and step > 0:
                self.ctx.metrics.sampler_step.observe(now - self._last_step_at)
            self._last_step_at = now
        stage_changed = stage != self._last_stage
        due = now - self._last_write >= self.ctx.settings.worker_progress_interval_s
        if not (due or (stage_changed and now - self._last_write >= 0.05)):
            return
        self._last_write, self._last_stage = now, stage
        try:
            still_running = self.ctx.store.set_progress(self.job.id, stage, step, total, self.job.attempts)
        except redis.RedisError as exc:  # progress is best-effort; the job goes on while Redis is away
            log.debug("progress write for %s skipped: %s", self.job.id, exc)
            return
        if not still_running:
            # Someone else finished it, a newer attempt took it over, or it expired: stop wasting the GPU.
            self._canceled = True

    def should_cancel(self) -> bool:
        """Pipeline cancel hook: the job's cancel flag (throttled read) and the soft time limit."""
        now = time.monotonic()
        if now > self.soft_deadline:
            raise SoftTimeLimitExceeded(
                f"soft time limit of {self.ctx.settings.task_soft_time_limit_s}s exceeded"
            )
        if (
            not self._canceled
            and now - self._last_cancel_check >= self.ctx.settings.worker_progress_interval_s
        ):
            self._last_cancel_check = now
            try:
                self._canceled = self.ctx.store.is_cancel_requested(self.job.id)
            except redis.RedisError as exc:
                log.debug("cancel check for %s skipped: %s", self.job.id, exc)
        return self._canceled

    def timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 6)


def _decode(ctx: WorkerContext, data: bytes) -> np.ndarray:
    img = imaging.load_rgb(data, ctx.settings.max_input_pixels)
    return np.asarray(img, dtype=np.uint8)


def _encode(image: np.ndarray, fmt: str) -> bytes:
    return imaging.encode(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)), fmt)


def _hard_limit_watchdog(ctx: WorkerContext, jobs: list[Job]) -> threading.Timer:
    """Celery's solo pool has no hard time limit: fail the jobs, then end the process (it is restarted)."""
    limit = ctx.settings.task_hard_time_limit_s

    def fire() -> None:
        job_ids = [job.id for job in jobs]
        log.critical("jobs %s exceeded the hard time limit of %ss; failing them and exiting", job_ids, limit)
        for job in jobs:
            job_id = job.id
            try:
                message = f"hard time limit of {limit}s exceeded"
                finished = ctx.store.fail(job_id, ErrorCode.timeout, message, None, job.attempts)
                if finished is not None:
                    ctx.metrics.jobs.labels(status="failed", reason=ErrorCode.timeout.value).inc()
            except Exception:
                log.exception("could not record the hard timeout of %s", job_id)
        ctx.exit_process(EXIT_HARD_TIME_LIMIT)

    timer = threading.Timer(limit, fire)
    timer.daemon = True
    timer.start()
    return timer


# ----------------------------------------------------------------------------------------- lifecycle


def start_job(ctx: WorkerContext, job_id: str) -> Job | None:
    """Claim a job for this attempt; None when it must not run (missing, finished, canceled, retried out)."""
    job = with_retries(ctx, ctx.store.get, job_id, what="get job")
    if job is None:
        log.warning("job %s not found (expired or never created); dropping its message", job_id)
        return None
    if job.status.terminal:
        log.info("job %s is already %s; skipping", job_id, job.status)
        return None
    if job.status is JobStatus.running and ctx.ownership is not None:
        owner = with_retries(ctx, ctx.ownership.live_owner, job_id, ctx.settings.worker_heartbeat_max_age_s)
        if owner is not None:
            log.info("job %s is running on live worker %s; skipping this duplicate delivery", job_id, owner)
            return None
    job = with_retries(ctx, ctx.store.mark_running, job_id, what="mark running")
    if job is None:
        return None  # canceled or finished between the two reads
    try:
        return _started(ctx, job)
    except Exception as exc:
        # Marked running but not handed to run_job: a bug here must not leave it 'running' for good.
        if not is_transient(exc):  # transient: the task requeues the message and the job runs again
            log.exception("job %s: unexpected error while starting it", job_id)
            _transition(
                ctx,
                "mark failed",
                ctx.store.fail,
                job_id,
                ErrorCode.internal,
                f"internal error ({type(exc).__name__})",
                None,
                job.attempts,
            )
        raise


def _started(ctx: WorkerContext, job: Job) -> Job | None:
    """The checks and bookkeeping of a job just marked running; None when it must not run after all."""
    job_id = job.id
    if job.attempts > 1:
        ctx.metrics.redeliveries.inc()
        log.warning("job %s redelivered (attempt %d): its previous worker was lost", job_id, job.attempts)
    if job.attempts > ctx.settings.worker_max_attempts:
        message = (
            f"the job was started {job.attempts - 1} times and its worker was lost each time "
            "(crash, OOM kill or restart); giving up"
        )
        finish_failed(ctx, job, ErrorCode.worker_lost, message)
        return None
    if with_retries(ctx, ctx.store.is_cancel_requested, job_id, what="read cancel flag"):
        finish_canceled(ctx, job)
        return None
    if job.attempts == 1 and job.started_at is not None:
        ctx.metrics.queue_wait.observe(max(0.0, (job.started_at - job.created_at).total_seconds()))
    if ctx.ownership is not None:
        with_retries(ctx, ctx.ownership.claim, job_id, what="claim job")
    with_retries(
        ctx,
        ctx.store.set_progress,
        job_id,
        "starting",
        0,
        job.params.steps,
        job.attempts,
        what="reset progress",
    )
    return job


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Run one job (plus any batch mates) end to end; returns its final status (or 'skipped').

    Raises only transient errors that outlived their retries and could not even be recorded.
    """
    job = start_job(ctx, job_id)
    if job is None:
        return "skipped"
    mates: list[Job] = []
    if ctx.batcher is not None:
        try:
            mates = ctx.batcher.claim_mates(job, lambda mate_id: start_job(ctx, mate_id))
        except Exception as exc:  # batching is an optimisation: the job we hold runs alone
            log.warning("job %s: claiming batch mates failed (%s); running it alone", job_id, exc)
    executions = [Execution(ctx, j) for j in (job, *mates)]
    ctx.metrics.busy.set(1)
    watchdog = _hard_limit_watchdog(ctx, [e.job for e in executions])
    try:
        statuses = run_executions(ctx, executions)
    except Exception as exc:
        _abandon(ctx, executions, mates, exc)
        raise
    else:
        _release(ctx, executions, mates)
    finally:
        watchdog.cancel()
        ctx.metrics.busy.set(0)
        for execution in executions:
            ctx.metrics.job_duration.observe(time.monotonic() - execution.started)
    return statuses[0]


def _abandon(ctx: WorkerContext, executions: list[Execution], mates: list[Job], exc: Exception) -> None:
    """``run_executions`` raised: make sure no job of the batch stays ``running`` with no message left.

    Transient (storage away beyond the retries): the task requeues the first job's message; the mates'
    parked messages go back to the queue too, so every job runs again. Anything else is a bug: every job
    that has not ended is failed ``internal`` (the message is acked, nothing would run it again).
    """
    if is_transient(exc):
        try:
            if ctx.batcher is not None:
                for mate in mates:
                    ctx.batcher.requeue(mate.id)
            if ctx.ownership is not None:
                for execution in executions:
                    ctx.ownership.release(execution.job.id)
        except redis.RedisError as err:  # still down: the parked messages wait for a restart's recovery
            log.error("could not requeue the batch of %s: %s", executions[0].job.id, err)
        return
    log.exception("job %s: unexpected error outside the per-job handling", executions[0].job.id)
    message = f"internal error ({type(exc).__name__})"
    for execution in executions:
        finished = _transition(
            ctx,
            "mark failed",
            ctx.store.fail,
            execution.job.id,
            ErrorCode.internal,
            message,
            None,
            execution.job.attempts,
        )
        if finished is not None:
            ctx.metrics.jobs.labels(status="failed", reason=ErrorCode.internal.value).inc()
    _release(ctx, executions, mates)


def _release(ctx: WorkerContext, executions: list[Execution], mates: list[Job]) -> None:
    """Forget ownership and parked messages of finished jobs (best effort: recovery skips finished jobs)."""
    try:
        if ctx.ownership is not None:
            for execution in executions:
                ctx.ownership.release(execution.job.id)
        if ctx.batcher is not None:
            for mate in mates:
                ctx.batcher.release(mate.id)
    except redis.RedisError as exc:
        log.warning("could not release finished jobs: %s", exc)


def _prepare(ctx: WorkerContext, execution: Execution) -> tuple[Any, Any]:
    """Fetch and decode the input, build the model options."""
    job = execution.job
    data = with_retries(ctx, ctx.blobs.get, input_key(job.id), what="fetch input")
    image = execution.timed("decode", _decode, ctx, data)
    return image, ctx.options_factory(**job.params.model_options())


def _settle(ctx: WorkerContext, execution: Execution, outcome: Any) -> str:
    """Record one job's outcome: a result, or the exception that ended it."""
    if isinstance(outcome, BlobNotFoundError):
        return finish_failed(
            ctx,
            execution.job,
            ErrorCode.internal,
            "the uploaded input is no longer stored",
            execution.timings,
        )
    if isinstance(outcome, Exception):
        return handle_failure(ctx, execution, outcome)
    try:
        return finish_succeeded(ctx, execution, outcome)
    except Exception as exc:  # encoding or storing the result failed
        return handle_failure(ctx, execution, exc)


def run_executions(ctx: WorkerContext, executions: list[Execution]) -> list[str]:
    """Prepare every job, run the model once (``restore`` or ``restore_batch``), settle each separately."""
    statuses: dict[str, str] = {}
    ready: list[tuple[Execution, Any, Any]] = []
    for execution in executions:
        try:
            ready.append((execution, *_prepare(ctx, execution)))
        except Exception as exc:
            statuses[execution.job.id] = _settle(ctx, execution, exc)
    outcomes: list[Any]
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
    elif ready:
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
    else:
        outcomes = []
    if ready:
        ctx.metrics.batch_size.observe(len(ready))
    for (execution, _, _), outcome in zip(ready, outcomes, strict=True):
        statuses[execution.job.id] = _settle(ctx, execution, outcome)
    return [statuses[e.job.id] for e in executions]


def handle_failure(ctx: WorkerContext, execution: Execution, exc: Exception) -> str:
    job = execution.job
    code = classify(exc)
    if code is ErrorCode.canceled:
        return finish_canceled(ctx, job)
    if is_transient(exc):
        # Retries are exhausted. Record it if Redis lets us; if it does not, re-raise so the message is not
        # acked and the broker redelivers the job later (it must never stay 'running' silently).
        log.error("job %s: storage unavailable after retries: %s", job.id, exc)
        # The exception text names internal endpoints (hosts, ports, bucket paths): it stays in the log.
        message = f"storage unavailable ({type(exc).__name__}); retry later"
        try:
            return finish_failed(ctx, job, ErrorCode.internal, message, execution.timings)
        except Exception:
            raise exc from None
    if code is ErrorCode.out_of_memory:
        _free_gpu_memory()
    if code is ErrorCode.internal:
        log.exception("job %s failed", job.id)
    message = _public_message(code, exc)
    return finish_failed(ctx, job, code, message, execution.timings)


def _public_message(code: ErrorCode, exc: BaseException) -> str:
    if code is ErrorCode.out_of_memory:
        return "the GPU ran out of memory; retry with a smaller image or upscale"
    if code is ErrorCode.internal:
        return f"internal error ({type(exc).__name__})"  # details stay in the worker log
    return str(exc) or type(exc).__name__


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _transition(ctx: WorkerContext, what: str, fn: Callable[..., Job | None], *args: Any) -> Job | None:
    """Write a final status; None when the job is gone or someone else already finished it."""
    try:
        return with_retries(ctx, fn, *args, what=what)
    except JobStateError as exc:
        log.warning("job %s not updated (%s): %s", args[0], what, exc)
        return None


def finish_succeeded(ctx: WorkerContext, execution: Execution, result: Any) -> str:
    job = execution.job
    fmt = job.params.output_format
    data = execution.timed("encode_output", _encode, result.image, fmt)
    height, width = int(result.image.shape[0]), int(result.image.shape[1])
    if not _still_ours(ctx, job):
        return "skipped"
    with_retries(
        ctx, ctx.blobs.put, result_key(job.id, fmt), data, job.params.content_type, what="store result"
    )
    timings = dict(execution.timings)
    for name, seconds in result.timings.items():
        timings["model_total" if name == "total" else name] = round(float(seconds), 6)
    timings["total"] = round(time.monotonic() - execution.started, 6)
    info = ResultInfo(
        url=result_url(job.id),
        content_type=job.params.content_type,
        width=width,
        height=height,
        bytes=len(data),
    )
    finished = _transition(ctx, "mark succeeded", ctx.store.succeed, job.id, info, timings, job.attempts)
    if finished is None:
        return "skipped"
    ctx.metrics.observe_stages(timings)
    if result.peak_memory_bytes is not None:
        ctx.metrics.gpu_peak_memory.observe(result.peak_memory_bytes)
    ctx.metrics.jobs.labels(status="succeeded", reason="").inc()
    if finished.finished_at is not None:
        ctx.metrics.turnaround.observe(max(0.0, (finished.finished_at - finished.created_at).total_seconds()))
    _drop_input(ctx, job.id)
    notify(ctx, finished)
    return finished.status.value


def _still_ours(ctx: WorkerContext, job: Job) -> bool:
    """Before writing the result blob: is this attempt still the job's current one?

    The result key is fixed per job, so a worker that was presumed dead (its job redelivered and maybe
    already finished by another worker) would otherwise overwrite the recorded result with different bytes.
    ``succeed`` fences the record itself; this check keeps the blob from being replaced first.
    """
    current = with_retries(ctx, ctx.store.get, job.id, what="re-read job")
    if current is None or current.status is not JobStatus.running or current.attempts != job.attempts:
        state = "gone" if current is None else f"{current.status}, attempt {current.attempts}"
        log.warning("job %s: attempt %d is stale (%s); its result is discarded", job.id, job.attempts, state)
        return False
    return True


def finish_failed(
    ctx: WorkerContext, job: Job, code: ErrorCode, message: str, timings: dict[str, float] | None = None
) -> str:
    finished = _transition(ctx, "mark failed", ctx.store.fail, job.id, code, message, timings, job.attempts)
    if finished is None:
        return "skipped"
    log.warning("job %s failed: %s: %s", job.id, code.value, message)
    ctx.metrics.jobs.labels(status="failed", reason=code.value).inc()
    notify(ctx, finished)
    return finished.status.value


def finish_canceled(ctx: WorkerContext, job: Job) -> str:
    finished = _transition(ctx, "mark canceled", ctx.store.mark_canceled, job.id, job.attempts)
    if finished is None:
        return "skipped"
    log.info("job %s canceled", job.id)
    ctx.metrics.jobs.labels(status="canceled", reason=ErrorCode.canceled.value).inc()
    _drop_input(ctx, job.id)
    notify(ctx, finished)
    return finished.status.value


def _drop_input(ctx: WorkerContext, job_id: str) -> None:
    """Inputs of finished jobs are no longer needed (failed ones are kept for a retry)."""
    try:
        ctx.blobs.delete(input_key(job_id))
    except Exception as exc:  # storage lifecycle rules / TTLs clean up what this misses
        log.info("could not delete input of %s: %s", job_id, exc)


# ----------------------------------------------------------------------------------------- webhooks


def webhook_payload(job: Job) -> dict[str, Any]:
    return {"event": f"job.{job.status.value}", "job": job.public_dict()}


def notify(ctx: WorkerContext, job: Job) -> None:
    """Deliver the job's webhook in the background so a slow receiver never holds the GPU."""
    if not job.params.callback_url or job.status not in (
        JobStatus.succeeded,
        JobStatus.failed,
        JobStatus.canceled,
    ):
        return
    ctx.webhook_pool.submit(send_webhook, ctx, job)


def send_webhook(ctx: WorkerContext, job: Job) -> bool:
    s = ctx.settings
    assert job.params.callback_url is not None
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    result = deliver(
        job.params.callback_url,
        webhook_payload(job),
        secret,
        event=f"job.{job.status.value}",
        allowlist=s.webhook_allow_hosts,
        allow_private=s.webhook_allow_private,
        max_attempts=s.webhook_max_retries + 1,
        backoff_s=s.webhook_backoff_s,
        timeout_s=s.webhook_timeout_s,
    )
    ctx.metrics.webhooks.labels(outcome="delivered" if result.delivered else "failed").inc()
    return result.delivered


# ----------------------------------------------------------------------------------------- the Celery task


@app.task(
    name=get_worker_settings().task_name,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def restore(self: Any, job_id: str) -> str:
    """Celery entry point (args ``[job_id]``); the job record, not Celery, carries the outcome."""
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        log.error("dropping a task with an invalid job id: %r", job_id)
        return "invalid"
    try:
        return run_job(runner.context(), job_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The outcome could not be recorded (Redis/S3 away beyond the retries). Acking would leave the job
        # 'running' forever; requeue instead (or, if the broker is gone too, leave it unacked until the
        # visibility timeout) so it runs again, bounded by worker_max_attempts.
        log.error("job %s: requeued after an unrecorded storage failure: %s", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
