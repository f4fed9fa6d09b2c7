"""Job records on Redis, event-loop side: the API's submissions and its hot status reads.

Status transitions stay in the sync ``common.job_store`` (rare on the API: a failed publish, a cancel).
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline as AsyncPipeline

from common.errors import JobStateError
from common.job_store import stamp_expiry
from common.jobs import Job
from common.keys import OUTBOX_KEY, job_key
from common.settings import Settings


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
    submission's record, so a submit needs no thread-pool hop for Redis. Same keys and semantics as the
    matching ``JobStore`` methods; status transitions stay there."""

    def __init__(self, client: aioredis.Redis, settings: Settings | None = None):
        self.redis = client
        self._gets = _CoalescedGets(client)
        self.ttl = (settings or Settings()).job_ttl_seconds

    def transaction(self) -> AsyncPipeline:
        """A MULTI on this store's Redis that other writers may queue on before ``create`` executes it (the
        input blob joins a submission's record this way: one round trip, all or nothing)."""
        return self.redis.pipeline(transaction=True)

    async def create(self, job: Job, tx: AsyncPipeline | None = None) -> None:
        """Write a new job record and its outbox entry in one MULTI (so a job that is never published is
        found and republished by a worker's outbox sweep); with ``tx`` (from ``transaction``), together with
        the writes already queued on it."""
        stamp_expiry(job, self.ttl)
        if tx is None:
            async with self.transaction() as pipe:
                created = await self._create_on(pipe, job)
        else:
            created = await self._create_on(tx, job)
        if not created:
            raise JobStateError(f"job {job.id} already exists")

    async def _create_on(self, pipe: AsyncPipeline, job: Job) -> bool:
        pipe.set(job_key(job.id), job.to_redis(), ex=self.ttl, nx=True)
        pipe.zadd(OUTBOX_KEY, {job.id: time.time()})
        return bool((await pipe.execute())[-2])

    async def get_raw(self, job_id: str) -> bytes | None:
        return await self._gets.get(job_key(job_id))

    async def get(self, job_id: str) -> Job | None:
        raw = await self.get_raw(job_id)
        return None if raw is None else Job.model_validate_json(raw)
