"""Job records on Redis, sync side: create, read and every status transition (worker, API thread pool).

Status changes go through ``JobStore.transition``: an optimistic WATCH/MULTI transaction that re-reads the
document, checks the current status against the allowed sources and writes only if nobody changed it in the
meantime, so a cancel and a finish can never both win. Finished jobs are kept ``job_ttl_seconds`` after they
finish. Writes of a worker's attempt carry its number (``attempt``) and are refused once a newer attempt has
taken the job over (fencing).

The job outbox (``diffbir:outbox``; not the webhook outbox) is written in the same transaction as the job: a
job is in it from its creation until a worker claims it (or it ends), so a job whose broker message was never
published or got lost is found and republished (``worker.outbox``). ``claim`` is the worker's one atomic step
from "delivered" to "mine": status running, attempts + 1, ownership recorded, out of the job outbox.

Every write of a document also queues, in the same MULTI, what follows from it: the entry of the job's event
stream (``common.progress_events``), the release of its owner's active-job slot when it ends
(``common.quotas``) and the webhook message its new status causes (``common.webhook_outbox``). So none of
them can be lost or sent for a change that did not happen, whichever process made the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import redis
from redis.client import Pipeline

from common.errors import JobStateError
from common.jobs import ErrorCode, Job, JobError, JobStatus, Progress, ResultInfo, utcnow
from common.keys import HOLDERS_KEY, OUTBOX_KEY, cancel_key, held_key, job_key, lease_key, owner_key
from common.params import RestoreParams
from common.progress_events import queue_event
from common.quotas import queue_release
from common.settings import Settings
from common.webhook_outbox import queue_for_change

_MAX_TX_RETRIES = 50


class JobStore:
    """Sync job store shared by the API (through its thread pool) and the worker."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.ttl = settings.job_ttl_seconds

    # --- create / read ---

    def create(self, job: Job) -> None:
        """Write a new job record and its outbox entry (API submissions use ``AsyncJobStore.create``)."""
        stamp_expiry(job, self.ttl)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(job_key(job.id), job.to_redis(), ex=self.ttl, nx=True)
            pipe.zadd(OUTBOX_KEY, {job.id: time.time()})
            created, _ = pipe.execute()
        if not created:
            raise JobStateError(f"job {job.id} already exists")

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.get(job_key(job_id))
        return None if raw is None else Job.model_validate_json(raw)

    # --- transitions ---

    def transition(
        self,
        job_id: str,
        allowed_from: Iterable[JobStatus],
        mutate: Callable[[Job], None],
    ) -> Job | None:
        """Apply ``mutate`` to the job atomically if its status is in ``allowed_from``.

        Returns the new job, or None when the job does not exist. Raises ``JobStateError`` when the status
        does not allow it (e.g. the job was canceled while the worker was finishing it).
        """
        allowed = frozenset(allowed_from)
        key = job_key(job_id)

        def act(pipe: Pipeline, job: Job) -> None:
            if job.status not in allowed:
                raise JobStateError(f"job {job_id} is {job.status}")
            before = job.status
            mutate(job)
            pipe.multi()
            if job.status is not JobStatus.queued:
                pipe.zrem(OUTBOX_KEY, job_id)  # started or ended: no message needed any more
            if job.status.terminal:
                self._write_finished(pipe, job)
                pipe.delete(cancel_key(job_id))
            else:
                pipe.set(key, job.to_redis(), keepttl=True)
            self._queue_consequences(pipe, before, job)

        return self._atomically(job_id, act)

    def _write_finished(self, pipe: Pipeline, job: Job) -> None:
        """Queue a finished job's write: kept a full TTL after it finished, not after it was queued (its
        ``expires_at`` says so)."""
        stamp_expiry(job, self.ttl, renew=True)
        pipe.set(job_key(job.id), job.to_redis(), ex=self.ttl)

    def _queue_consequences(self, pipe: Pipeline, before: JobStatus, job: Job) -> None:
        """What a written change implies, queued in its MULTI (see the module docstring)."""
        queue_event(pipe, job, status_changed=job.status is not before, ttl_s=self.ttl)
        if job.status.terminal and not before.terminal:
            queue_release(pipe, job.owner, job.id)
        queue_for_change(pipe, before, job)

    def _atomically(self, job_id: str, act: Callable[[Pipeline, Job], None]) -> Job | None:
        """Read the job under WATCH, let ``act`` check it and queue its writes (after ``pipe.multi()``), and
        commit; retried when another writer changed the job in between. None when the job does not exist."""
        key = job_key(job_id)
        for _ in range(_MAX_TX_RETRIES):
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    job = Job.model_validate_json(raw)
                    act(pipe, job)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue
        raise JobStateError(f"job {job_id}: too much contention")

    def mark_running(self, job_id: str) -> Job | None:
        """queued -> running (or a redelivered running job: attempts += 1). None: missing or not runnable."""

        def start(job: Job) -> None:
            job.status = JobStatus.running
            job.started_at = job.started_at or utcnow()
            job.attempts += 1

        try:
            return self.transition(job_id, (JobStatus.queued, JobStatus.running), start)
        except JobStateError:
            return None

    def claim(self, job_id: str, worker_id: str | None = None, owner_ttl_s: int | None = None) -> Claim:
        """A delivered job becomes this worker's attempt in ONE transaction: status running, attempts + 1,
        ownership (``owner:{job}``, ``held:{worker}``, ``holders``) and out of the outbox, or nothing.

        Refused (``Claim.job`` None, ``why`` says so) when the job is missing, finished, or running under
        another worker whose lease is still alive (a duplicate delivery). Without ``worker_id`` no
        ownership is recorded (nothing can requeue the job fast if this worker dies).
        """
        key = job_key(job_id)
        owner_name = owner_key(job_id)
        for _ in range(_MAX_TX_RETRIES):
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key, owner_name)
                    raw = pipe.get(key)
                    if raw is None:
                        return Claim(None, "missing")
                    job = Job.model_validate_json(raw)
                    if job.status not in (JobStatus.queued, JobStatus.running):
                        return Claim(None, str(job.status))
                    if job.status is JobStatus.running:
                        owner = _text(pipe.get(owner_name))
                        if owner and owner != worker_id and pipe.exists(lease_key(owner)):
                            return Claim(None, f"running on live worker {owner}")
                    before = job.status
                    job.status = JobStatus.running
                    job.started_at = job.started_at or utcnow()
                    job.attempts += 1
                    pipe.multi()
                    pipe.set(key, job.to_redis(), keepttl=True)
                    pipe.zrem(OUTBOX_KEY, job_id)
                    self._queue_consequences(pipe, before, job)
                    if worker_id is not None:
                        pipe.set(owner_name, worker_id, ex=owner_ttl_s or self.ttl)
                        pipe.sadd(held_key(worker_id), job_id)
                        pipe.sadd(HOLDERS_KEY, worker_id)
                    pipe.execute()
                    return Claim(job, "claimed")
                except redis.WatchError:
                    continue
        raise JobStateError(f"job {job_id}: too much contention")

    def set_progress(
        self, job_id: str, stage: str, step: int, total: int, attempt: int | None = None
    ) -> bool:
        """Record progress of a running job; False when the job is no longer running (or, with
        ``attempt``, when a newer attempt took it over: the caller should stop)."""
        fraction = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))

        def update(job: Job) -> None:
            _check_attempt(job, attempt)
            job.progress = Progress(stage=stage, step=step, total=total, fraction=round(fraction, 4))

        try:
            return self.transition(job_id, (JobStatus.running,), update) is not None
        except JobStateError:
            return False

    def succeed(
        self,
        job_id: str,
        result: ResultInfo,
        timings: dict[str, float] | None = None,
        attempt: int | None = None,
        resolved: RestoreParams | None = None,
        model_version: str | None = None,
    ) -> Job | None:
        """running -> succeeded. With ``attempt`` (the worker's fencing token, ``Job.attempts`` when it
        started), refused with ``JobStateError`` once a newer attempt has taken the job over. ``resolved``
        and ``model_version``: what ran (defaults filled in, the seed used) and on which weights."""

        def finish(job: Job) -> None:
            _check_attempt(job, attempt)
            job.resolved = resolved if resolved is not None else job.resolved
            job.model_version = model_version if model_version is not None else job.model_version
            job.status = JobStatus.succeeded
            job.finished_at = utcnow()
            job.result = result
            job.timings = dict(timings or {})
            if job.progress is not None:
                job.progress = Progress(
                    stage="done", step=job.progress.total, total=job.progress.total, fraction=1.0
                )

        return self.transition(job_id, (JobStatus.running,), finish)

    def fail(
        self,
        job_id: str,
        code: ErrorCode,
        message: str,
        timings: dict[str, float] | None = None,
        attempt: int | None = None,
    ) -> Job | None:
        def finish(job: Job) -> None:
            _check_attempt(job, attempt)
            job.status = JobStatus.failed
            job.finished_at = utcnow()
            job.error = JobError(code=code, message=message[:1000])
            if timings:
                job.timings = dict(timings)

        return self.transition(job_id, (JobStatus.queued, JobStatus.running), finish)

    def mark_canceled(self, job_id: str, attempt: int | None = None) -> Job | None:
        """Worker side: a running job stopped because its cancel flag was set."""

        def finish(job: Job) -> None:
            _check_attempt(job, attempt)
            job.status = JobStatus.canceled
            job.finished_at = utcnow()
            job.error = JobError(code=ErrorCode.canceled, message="canceled by the client")

        return self.transition(job_id, (JobStatus.queued, JobStatus.running), finish)

    def request_cancel(self, job_id: str) -> Job | None:
        """Client side: queued -> canceled now (it will never run); running -> set the cancel flag.

        One WATCH transaction reads the status and acts on it, so a job that finishes meanwhile is never
        answered "running" with a flag left behind. Raises ``JobStateError`` when the job already finished.
        Returns None when it does not exist.
        """

        def act(pipe: Pipeline, job: Job) -> None:
            if job.status.terminal:
                raise JobStateError(f"job {job_id} is already {job.status}")
            pipe.multi()
            if job.status is JobStatus.queued:
                _cancel_now(job)
                self._write_finished(pipe, job)
                pipe.zrem(OUTBOX_KEY, job_id)
                self._queue_consequences(pipe, JobStatus.queued, job)
            else:
                pipe.set(cancel_key(job_id), b"1", ex=self.ttl)

        return self._atomically(job_id, act)

    def is_cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(cancel_key(job_id)))


@dataclass(frozen=True)
class Claim:
    """What ``JobStore.claim`` did: the job now running as this attempt, or None and why not."""

    job: Job | None
    why: str


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def stamp_expiry(job: Job, ttl_s: int, *, renew: bool = False) -> None:
    """Record in the document when Redis will delete it (the key's TTL is set in the same write)."""
    if renew or job.expires_at is None:
        job.expires_at = utcnow() + timedelta(seconds=ttl_s)


def _check_attempt(job: Job, attempt: int | None) -> None:
    """Fencing: a worker that was presumed dead (and whose job was redelivered) must not write over the
    attempt that replaced it, neither its progress nor its outcome."""
    if attempt is not None and job.attempts != attempt:
        raise JobStateError(f"job {job.id}: attempt {attempt} was superseded by attempt {job.attempts}")


def _cancel_now(job: Job) -> None:
    job.status = JobStatus.canceled
    job.finished_at = utcnow()
    job.error = JobError(code=ErrorCode.canceled, message="canceled by the client before it started")
