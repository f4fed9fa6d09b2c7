"""Job records on Redis: the job document of docs/design.md, its lifecycle and idempotency mapping.

Keys (prefix ``diffbir:``): ``job:{id}`` (JSON document, expires ``job_ttl_seconds`` after the last status
change), ``cancel:{id}`` (cancel flag for a running job), ``idem:{owner}:{key}`` (Idempotency-Key -> job id)
and ``workers`` (zset worker id -> last heartbeat, unix seconds). There are no lists of jobs: a job is found
by its unguessable id only, so nothing grows without bound.

Status changes go through ``JobStore.transition``: an optimistic WATCH/MULTI transaction that re-reads the
document, checks the current status against the allowed sources and writes only if nobody changed it in the
meantime, so a cancel and a finish can never both win.

Lifecycle::

    queued -> running -> succeeded | failed | canceled
    queued -> canceled | failed
    running -> running   (redelivery after a lost worker; attempts += 1)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.client import Pipeline

from common.errors import JobStateError
from common.params import RestoreParams
from common.settings import Settings

KEY_PREFIX = "diffbir:"
WORKERS_KEY = KEY_PREFIX + "workers"
ANONYMOUS_OWNER = "anonymous"
_MAX_TX_RETRIES = 50


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class ErrorCode(StrEnum):
    bad_input = "bad_input"
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    internal = "internal"
    canceled = "canceled"
    worker_lost = "worker_lost"


class Progress(BaseModel):
    stage: str
    step: int = Field(ge=0)
    total: int = Field(ge=0)
    fraction: float = Field(ge=0.0, le=1.0)


class InputInfo(BaseModel):
    width: int
    height: int
    format: str
    bytes: int = 0
    conversions: list[str] = Field(default_factory=list)


class ResultInfo(BaseModel):
    url: str
    content_type: str
    width: int
    height: int
    bytes: int = 0


class JobError(BaseModel):
    code: ErrorCode
    message: str


class Job(BaseModel):
    id: str
    status: JobStatus = JobStatus.queued
    progress: Progress | None = None
    params: RestoreParams
    input: InputInfo
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    error: JobError | None = None
    attempts: int = 0
    result: ResultInfo | None = None
    owner: str = ANONYMOUS_OWNER  # hash of the API key; never shown to clients

    def public_dict(self) -> dict[str, Any]:
        """The document clients see (design.md): everything but the owner."""
        return self.model_dump(mode="json", exclude={"owner"})

    def to_redis(self) -> str:
        return self.model_dump_json()


_OWNER_FIELD = b',"owner":'


def public_document(raw: bytes, owner: str) -> bytes | None:
    """The stored document minus its owner, if ``owner`` owns it, without a pydantic round trip.

    Hand-written because the status route is the API's hottest: parsing and re-dumping the ``Job`` costs
    more CPU than the rest of the request. ``Job.to_redis`` writes compact JSON with ``owner`` as the last
    field, so the raw bytes end with ``,"owner":"<owner>"}``; ``,"`` cannot occur inside a JSON string
    (quotes there are escaped), so the last ``,"owner":`` is the field. The owner comparison is constant
    time. Returns None for another owner's job (callers answer 404). A document of any other shape (e.g.
    written by an older version) takes the slow, exact path.
    """
    head, sep, tail = raw.rpartition(_OWNER_FIELD)
    plain = tail.startswith(b'"') and tail.endswith(b'"}') and tail.count(b'"') == 2 and b"\\" not in tail
    if sep and plain:
        if not hmac.compare_digest(tail[1:-2], owner.encode()):
            return None
        return head + b"}"
    job = Job.model_validate_json(raw)
    if not hmac.compare_digest(job.owner.encode(), owner.encode()):
        return None
    return job.model_dump_json(exclude={"owner"}).encode()


# ------------------------------------------------------------------------------------------- naming helpers


def new_job_id() -> str:
    return "j_" + secrets.token_urlsafe(16)


_JOB_ID = re.compile(r"j_[A-Za-z0-9_-]{18,62}")


def is_valid_job_id(job_id: str) -> bool:
    """Cheap shape check so junk ids never reach Redis key names."""
    return _JOB_ID.fullmatch(job_id) is not None


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}cancel:{job_id}"


def idempotency_key(owner: str, key: str) -> str:
    # The client's key is hashed so arbitrary header bytes never become part of a Redis key name.
    return f"{KEY_PREFIX}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def result_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/result"


def utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------- connections


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }


def connect(settings: Settings) -> redis.Redis:
    """Sync client (worker, API thread pool); bytes responses because blobs share the connection."""
    return redis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


def connect_async(settings: Settings) -> aioredis.Redis:
    """Async client for the API's hot read path."""
    return aioredis.Redis.from_url(settings.redis_url, **_client_kwargs(settings))


# ------------------------------------------------------------------------------------------- idempotency


class IdempotencyRecord(BaseModel):
    job_id: str
    fingerprint: str
    created_at: float = Field(default_factory=time.time)  # unix seconds; tells an abandoned claim apart


# ------------------------------------------------------------------------------------------- store


class JobStore:
    """Sync job store shared by the API (through its thread pool) and the worker."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.ttl = settings.job_ttl_seconds
        self.idempotency_ttl = settings.idempotency_ttl_seconds

    # --- create / read ---

    def create(self, job: Job, with_writes: Callable[[redis.Redis], None] | None = None) -> None:
        """Write a new job record. ``with_writes`` queues more writes on the same pipeline (the API stores
        the input blob this way on a Redis blob store), so they share one round trip and one MULTI."""
        if with_writes is None:
            created = self.redis.set(job_key(job.id), job.to_redis(), ex=self.ttl, nx=True)
        else:
            with self.redis.pipeline(transaction=True) as pipe:
                with_writes(pipe)
                pipe.set(job_key(job.id), job.to_redis(), ex=self.ttl, nx=True)
                created = pipe.execute()[-1]
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
            mutate(job)
            pipe.multi()
            if job.status.terminal:
                # Keep finished jobs for a full TTL after they finish, not after they were queued.
                pipe.set(key, job.to_redis(), ex=self.ttl)
                pipe.delete(cancel_key(job_id))
            else:
                pipe.set(key, job.to_redis(), keepttl=True)

        return self._atomically(job_id, act)

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
    ) -> Job | None:
        """running -> succeeded. With ``attempt`` (the worker's fencing token, ``Job.attempts`` when it
        started), refused with ``JobStateError`` once a newer attempt has taken the job over."""

        def finish(job: Job) -> None:
            _check_attempt(job, attempt)
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
        key = job_key(job_id)

        def act(pipe: Pipeline, job: Job) -> None:
            if job.status.terminal:
                raise JobStateError(f"job {job_id} is already {job.status}")
            pipe.multi()
            if job.status is JobStatus.queued:
                _cancel_now(job)
                pipe.set(key, job.to_redis(), ex=self.ttl)
            else:
                pipe.set(cancel_key(job_id), b"1", ex=self.ttl)

        return self._atomically(job_id, act)

    def is_cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(cancel_key(job_id)))

    # --- idempotency ---

    def claim_idempotency(self, owner: str, key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """SET NX: None when this request now owns the key, else the record of the request that did."""
        name = idempotency_key(owner, key)
        if self.redis.set(name, record.model_dump_json(), ex=self.idempotency_ttl, nx=True):
            return None
        raw = self.redis.get(name)
        if raw is None:  # expired between SET and GET: try once more
            if self.redis.set(name, record.model_dump_json(), ex=self.idempotency_ttl, nx=True):
                return None
            raw = self.redis.get(name) or record.model_dump_json()
        return IdempotencyRecord.model_validate_json(raw)

    def replace_idempotency(
        self, owner: str, key: str, expected: IdempotencyRecord, record: IdempotencyRecord
    ) -> bool:
        """Swap ``expected`` for ``record`` atomically (compare-and-set); False if the key changed."""
        name = idempotency_key(owner, key)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(name)
                raw = pipe.get(name)
                if raw is None or IdempotencyRecord.model_validate_json(raw) != expected:
                    return False
                pipe.multi()
                pipe.set(name, record.model_dump_json(), ex=self.idempotency_ttl)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def release_idempotency(self, owner: str, key: str, job_id: str) -> None:
        """Forget a claim whose submission failed, so the client can retry with the same key."""
        name = idempotency_key(owner, key)
        raw = self.redis.get(name)
        if raw is not None and json.loads(raw).get("job_id") == job_id:
            self.redis.delete(name)

    # --- worker heartbeats ---

    def heartbeat(self, worker_id: str, now: float | None = None, max_age_s: float = 3600.0) -> None:
        ts = time.time() if now is None else now
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(WORKERS_KEY, {worker_id: ts})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", ts - max_age_s)  # forget long-dead workers
            pipe.execute()

    def remove_worker(self, worker_id: str) -> None:
        self.redis.zrem(WORKERS_KEY, worker_id)


def _check_attempt(job: Job, attempt: int | None) -> None:
    """Fencing: a worker that was presumed dead (and whose job was redelivered) must not write over the
    attempt that replaced it, neither its progress nor its outcome."""
    if attempt is not None and job.attempts != attempt:
        raise JobStateError(f"job {job.id}: attempt {attempt} was superseded by attempt {job.attempts}")


def _cancel_now(job: Job) -> None:
    job.status = JobStatus.canceled
    job.finished_at = utcnow()
    job.error = JobError(code=ErrorCode.canceled, message="canceled by the client before it started")


class _CoalescedGets:
    """Concurrent GETs issued in the same event-loop turn go to Redis as one MGET.

    Hand-written (redis-py has no auto-pipelining): the client's per-command overhead (pool checkout,
    timeouts, parsing) was most of the status route's CPU, and under load many polls arrive together.
    A lone request costs one MGET of one key (no added wait: the batch is sent at the end of the
    current loop turn); k concurrent ones share one round trip. Several batches may be in flight.
    """

    def __init__(self, client: aioredis.Redis):
        self.redis = client
        self._pending: dict[str, list[asyncio.Future[bytes | None]]] = {}

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.setdefault(key, []).append(future)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.ensure_future(self._fetch(batch))
        _IN_FLIGHT.add(task)  # keep a reference until done (the loop holds tasks only weakly)
        task.add_done_callback(_IN_FLIGHT.discard)

    async def _fetch(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.redis.mget(list(batch))
        except Exception as exc:  # every waiter gets the error (a RedisError becomes the route's 503)
            for waiters in batch.values():
                for future in waiters:
                    if not future.done():
                        future.set_exception(exc)
            return
        except BaseException:  # canceled (shutdown): so are the waiters
            for waiters in batch.values():
                for future in waiters:
                    future.cancel()
            raise
        for waiters, value in zip(batch.values(), values, strict=True):
            for future in waiters:
                if not future.done():  # a waiter whose request was canceled is skipped
                    future.set_result(value)


_IN_FLIGHT: set[asyncio.Task[None]] = set()


class AsyncJobStore:
    """The API's event-loop side of the store: the read path (status polling is the hottest route) and a
    submission's writes (job record, input blob, idempotency claim), so a submit needs no thread-pool hop
    for Redis. Same keys and semantics as the matching ``JobStore`` methods; status transitions stay there.
    """

    def __init__(self, client: aioredis.Redis, settings: Settings | None = None):
        self.redis = client
        self._gets = _CoalescedGets(client)
        defaults = settings or Settings()
        self.ttl = defaults.job_ttl_seconds
        self.idempotency_ttl = defaults.idempotency_ttl_seconds

    async def create(self, job: Job, with_writes: Callable[[Any], None] | None = None) -> None:
        """``JobStore.create`` on the event loop; ``with_writes`` queues more writes (the input blob) on the
        same MULTI, so the blob and the record land in one round trip."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if with_writes is not None:
                with_writes(pipe)
            pipe.set(job_key(job.id), job.to_redis(), ex=self.ttl, nx=True)
            created = (await pipe.execute())[-1]
        if not created:
            raise JobStateError(f"job {job.id} already exists")

    async def claim_idempotency(
        self, owner: str, key: str, record: IdempotencyRecord
    ) -> IdempotencyRecord | None:
        """SET NX: None when this request now owns the key, else the record of the request that did."""
        name = idempotency_key(owner, key)
        doc = record.model_dump_json()
        if await self.redis.set(name, doc, ex=self.idempotency_ttl, nx=True):
            return None
        raw = await self.redis.get(name)
        if raw is None:  # expired between SET and GET: try once more
            if await self.redis.set(name, doc, ex=self.idempotency_ttl, nx=True):
                return None
            raw = await self.redis.get(name) or doc
        return IdempotencyRecord.model_validate_json(raw)

    async def replace_idempotency(
        self, owner: str, key: str, expected: IdempotencyRecord, record: IdempotencyRecord
    ) -> bool:
        """Swap ``expected`` for ``record`` atomically (compare-and-set); False if the key changed."""
        name = idempotency_key(owner, key)
        async with self.redis.pipeline() as pipe:
            try:
                await pipe.watch(name)
                raw = await pipe.get(name)
                if raw is None or IdempotencyRecord.model_validate_json(raw) != expected:
                    return False
                pipe.multi()
                pipe.set(name, record.model_dump_json(), ex=self.idempotency_ttl)
                await pipe.execute()
                return True
            except redis.WatchError:
                return False

    async def release_idempotency(self, owner: str, key: str, job_id: str) -> None:
        """Forget a claim whose submission failed, so the client can retry with the same key."""
        name = idempotency_key(owner, key)
        raw = await self.redis.get(name)
        if raw is not None and json.loads(raw).get("job_id") == job_id:
            await self.redis.delete(name)

    async def get_raw(self, job_id: str) -> bytes | None:
        return await self._gets.get(job_key(job_id))

    async def get(self, job_id: str) -> Job | None:
        raw = await self.get_raw(job_id)
        return None if raw is None else Job.model_validate_json(raw)

    async def latest_heartbeat(self) -> float | None:
        entries = await self.redis.zrevrange(WORKERS_KEY, 0, 0, withscores=True)
        return float(entries[0][1]) if entries else None

    async def count_workers(self, max_age_s: float, now: float | None = None) -> tuple[int, int]:
        """(fresh, stale) registered workers: heartbeat within ``max_age_s`` or older (one round trip)."""
        cutoff = (time.time() if now is None else now) - max_age_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(WORKERS_KEY, cutoff, "+inf")
            pipe.zcount(WORKERS_KEY, "-inf", f"({cutoff}")
            fresh, stale = await pipe.execute()
        return int(fresh), int(stale)
