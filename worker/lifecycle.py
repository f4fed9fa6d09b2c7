"""A delivered job's lifecycle on the worker, and every status write it makes:

    claim (one transaction: skip if finished/canceled/running on a live worker, else mark running,
    attempts += 1, record ownership) -> claim batch mates -> fetch input
    -> decode -> pipeline (throttled progress, cancel flag, soft deadline) -> encode -> store result
    -> mark succeeded | failed | canceled (the webhook message is queued with the status: common.job_store)

Delivery is at-least-once (late acks; a dead worker's message is redelivered), so every step is safe to
repeat: a finished job is skipped, a redelivered running job starts over and counts ``attempts``, and a job
delivered more than ``worker_max_attempts`` times ends ``failed`` with ``worker_lost`` instead of
crash-looping. Final writes carry the attempt number, so a superseded attempt writes nothing. The input blob
is kept on failure so the job can be retried.

Finishing rides out storage outages: the result and the final status are retried until
``worker_finish_retry_s`` has passed; past that the job is failed if Redis allows, else handed back to the
queue by the lease thread as soon as Redis returns (``runner.hand_back_later``), never left ``running``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from PIL import Image

from common import imaging
from common.blobstore import BlobNotFoundError, input_key, result_key
from common.errors import JobStateError
from common.faults import fault_point
from common.jobs import ErrorCode, Job, JobStatus, ResultInfo, result_url
from common.params import RestoreParams
from worker import loading
from worker.context import WorkerContext
from worker.execution import Execution, Prepared, prepare, run_model, start_hard_limit_watchdog
from worker.failures import classify, is_transient, public_message, with_retries

if TYPE_CHECKING:
    from model.options import RestoreResult

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- one delivery


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
    watchdog = start_hard_limit_watchdog(ctx, [e.job for e in executions])
    try:
        statuses = run_executions(ctx, executions)
    except Exception as exc:
        _abandon(ctx, executions, mates, exc)
        raise
    else:
        _release(ctx, executions, mates)
    finally:
        watchdog.cancel()
        ctx.running.difference_update(e.job.id for e in executions)
        ctx.metrics.busy.set(0)
        for execution in executions:
            ctx.metrics.job_duration.observe(time.monotonic() - execution.started)
            execution.trace.finish("interrupted")  # no-op for a job that was settled
    return statuses[0]


def run_executions(ctx: WorkerContext, executions: list[Execution]) -> list[str]:
    """Prepare every job, run the model once, settle each job separately; returns their final statuses."""
    statuses: dict[str, str] = {}
    ready: list[Prepared] = []
    for execution in executions:
        with execution.trace.active():
            try:
                ready.append((execution, *prepare(ctx, execution)))
            except Exception as exc:  # settled now: a bad input need not wait for its mates' model call
                statuses[execution.job.id] = settle(ctx, execution, exc)
                execution.trace.finish(statuses[execution.job.id])
    outcomes = run_model(ctx, ready)
    for (execution, _, _), outcome in zip(ready, outcomes, strict=True):
        with execution.trace.active():
            statuses[execution.job.id] = settle(ctx, execution, outcome)
            execution.trace.finish(statuses[execution.job.id])
    return [statuses[e.job.id] for e in executions]


def _abandon(ctx: WorkerContext, executions: list[Execution], mates: list[Job], exc: Exception) -> None:
    """``run_executions`` raised: make sure no job of the batch stays ``running`` with no message left.

    Transient (storage away beyond the retries): the task requeues the first job's message (and it is
    handed back through the outbox); the mates' parked messages go back to the queue too, so every job runs
    again; if Redis is still away, the lease thread hands them all back once it returns. Anything else is a
    bug: every job that has not ended is failed ``internal`` (the message is acked, nothing would run it
    again).
    """
    if is_transient(exc):
        try:
            if ctx.batcher is not None:
                for mate in mates:
                    ctx.batcher.requeue(mate.id)
            if ctx.ownership is not None:
                # The first job goes back through the outbox too, not only the task's requeue: if that
                # reject never reaches the broker, the outbox sweep still finds the job (a duplicate is
                # refused by the claim).
                ctx.ownership.hand_back(executions[0].job.id)
                for execution in executions[1:]:
                    ctx.ownership.release(execution.job.id)
        except redis.RedisError as err:  # still down: the lease thread hands them back once Redis returns
            log.error("could not requeue the batch of %s: %s", executions[0].job.id, err)
            ctx.hand_back_later.update(e.job.id for e in executions)
        return
    log.exception("job %s: unexpected error outside the per-job handling", executions[0].job.id)
    message = f"internal error ({type(exc).__name__})"
    for execution in executions:
        job = execution.job
        finished = _transition(
            ctx, "mark failed", ctx.store.fail, job.id, ErrorCode.internal, message, None, job.attempts
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


# ----------------------------------------------------------------------------------------- start


def start_job(ctx: WorkerContext, job_id: str) -> Job | None:
    """Claim a job for this attempt; None when it must not run (missing, finished, canceled, retried out)."""
    claim_fn = ctx.ownership.claim if ctx.ownership is not None else ctx.store.claim
    claim = with_retries(ctx, claim_fn, job_id, what="claim job")
    job = claim.job
    if job is None:
        log.info("job %s not started (%s); dropping this delivery", job_id, claim.why)
        return None
    ctx.running.add(job_id)
    fault_point("after_claim")
    try:
        started = _started(ctx, job)
    except Exception as exc:
        # Marked running but not handed to run_job: a bug here must not leave it 'running' for good.
        if not is_transient(exc):  # transient: the task requeues the message and the job runs again
            log.exception("job %s: unexpected error while starting it", job_id)
            message = f"internal error ({type(exc).__name__})"
            _transition(
                ctx, "mark failed", ctx.store.fail, job_id, ErrorCode.internal, message, None, job.attempts
            )
        ctx.running.discard(job_id)  # still held if Redis was away: the lease thread hands it back
        raise
    if started is None:  # ended before it ran (retried out, or canceled): nothing of it is held any more
        ctx.running.discard(job_id)
        _release_ownership(ctx, job_id)
    return started


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
    steps = job.params.steps or 0  # unset: the weights version's default, known once the model resolves it
    with_retries(
        ctx, ctx.store.set_progress, job_id, "starting", 0, steps, job.attempts, what="reset progress"
    )
    return job


# ----------------------------------------------------------------------------------------- finish


def settle(ctx: WorkerContext, execution: Execution, outcome: RestoreResult | Exception) -> str:
    """Record one job's outcome: a result, or the exception that ended it."""
    if isinstance(outcome, BlobNotFoundError):
        message = "the uploaded input is no longer stored"
        return finish_failed(ctx, execution.job, ErrorCode.internal, message, execution.timings)
    if isinstance(outcome, Exception):
        return handle_failure(ctx, execution, outcome)
    try:
        return finish_succeeded(ctx, execution, outcome)
    except Exception as exc:  # encoding or storing the result failed
        return handle_failure(ctx, execution, exc)


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
        loading.free_device_memory()
    if code is ErrorCode.internal:
        log.exception("job %s failed", job.id)
    return finish_failed(ctx, job, code, public_message(code, exc), execution.timings)


def finish_succeeded(ctx: WorkerContext, execution: Execution, result: RestoreResult) -> str:
    job = execution.job
    fmt = job.params.output_format
    data = execution.timed("encode_output", _encode, result.image, fmt)
    height, width = int(result.image.shape[0]), int(result.image.shape[1])
    until = time.monotonic() + ctx.settings.worker_finish_retry_s  # ride out a storage outage until then
    if not _still_ours(ctx, job, until):
        return "skipped"
    key = result_key(job.id, fmt)
    with_retries(ctx, ctx.blobs.put, key, data, job.params.content_type, what="store result", until=until)
    fault_point("after_result_stored")
    timings = dict(execution.timings)
    for name, seconds in result.timings.items():
        timings["model_total" if name == "total" else name] = round(float(seconds), 6)
    timings["total"] = round(time.monotonic() - execution.started, 6)
    info = ResultInfo(
        url=result_url(job.id, job.urls),
        content_type=job.params.content_type,
        width=width,
        height=height,
        bytes=len(data),
        faces=result.faces,
    )
    finished = _transition(
        ctx,
        "mark succeeded",
        ctx.store.succeed,
        job.id,
        info,
        timings,
        job.attempts,
        resolved_params(job.params, getattr(result, "options", None)),
        getattr(result, "version", None),
        until=until,
    )
    if finished is None:
        return "skipped"
    fault_point("after_status_written")
    ctx.metrics.observe_stages(timings)
    if result.peak_memory_bytes is not None:
        ctx.metrics.gpu_peak_memory.observe(result.peak_memory_bytes)
    ctx.metrics.jobs.labels(status="succeeded", reason="").inc()
    if finished.finished_at is not None:
        ctx.metrics.turnaround.observe(max(0.0, (finished.finished_at - finished.created_at).total_seconds()))
    _drop_input(ctx, job.id)
    return finished.status.value


def resolved_params(params: RestoreParams, options: object | None) -> RestoreParams | None:
    """The request's parameters as the model ran them (`RestoreResult.options`: version defaults filled in,
    the seed used); None when the pipeline did not report them."""
    if options is None:
        return None
    ran = {name: getattr(options, name) for name in params.model_options() if hasattr(options, name)}
    return params.model_copy(update=ran)


def finish_failed(
    ctx: WorkerContext, job: Job, code: ErrorCode, message: str, timings: dict[str, float] | None = None
) -> str:
    finished = _transition(ctx, "mark failed", ctx.store.fail, job.id, code, message, timings, job.attempts)
    if finished is None:
        return "skipped"
    log.warning("job %s failed: %s: %s", job.id, code.value, message)
    ctx.metrics.jobs.labels(status="failed", reason=code.value).inc()
    return finished.status.value


def finish_canceled(ctx: WorkerContext, job: Job) -> str:
    finished = _transition(ctx, "mark canceled", ctx.store.mark_canceled, job.id, job.attempts)
    if finished is None:
        return "skipped"
    log.info("job %s canceled", job.id)
    ctx.metrics.jobs.labels(status="canceled", reason=ErrorCode.canceled.value).inc()
    _drop_input(ctx, job.id)
    return finished.status.value


def _encode(image: np.ndarray, fmt: str) -> bytes:
    return imaging.encode(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)), fmt)


def _still_ours(ctx: WorkerContext, job: Job, until: float | None = None) -> bool:
    """Before writing the result blob: is this attempt still the job's current one?

    The result key is fixed per job, so a worker that was presumed dead (its job redelivered and maybe
    already finished by another worker) would otherwise overwrite the recorded result with different bytes.
    ``succeed`` fences the record itself; this check keeps the blob from being replaced first.
    """
    current = with_retries(ctx, ctx.store.get, job.id, what="re-read job", until=until)
    if current is None or current.status is not JobStatus.running or current.attempts != job.attempts:
        state = "gone" if current is None else f"{current.status}, attempt {current.attempts}"
        log.warning("job %s: attempt %d is stale (%s); its result is discarded", job.id, job.attempts, state)
        return False
    return True


def _transition(
    ctx: WorkerContext, what: str, fn: Callable[..., Job | None], *args: Any, until: float | None = None
) -> Job | None:
    """Write a final status; None when the job is gone or someone else already finished it."""
    try:
        return with_retries(ctx, fn, *args, what=what, until=until)
    except JobStateError as exc:
        log.warning("job %s not updated (%s): %s", args[0], what, exc)
        return None


def _release_ownership(ctx: WorkerContext, job_id: str) -> None:
    try:
        if ctx.ownership is not None:
            ctx.ownership.release(job_id)
    except redis.RedisError as exc:  # the lease thread hands back what is held but not running here
        log.warning("could not release %s: %s", job_id, exc)


def _drop_input(ctx: WorkerContext, job_id: str) -> None:
    """Inputs of finished jobs are no longer needed (failed ones are kept for a retry)."""
    try:
        ctx.blobs.delete(input_key(job_id))
    except Exception as exc:  # storage lifecycle rules / TTLs clean up what this misses
        log.info("could not delete input of %s: %s", job_id, exc)
