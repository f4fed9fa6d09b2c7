"""The process-wide clients the routes use, built once in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import redis
import redis.asyncio as aioredis
from celery import Celery

from common.async_job_store import AsyncJobStore
from common.blobstore import BlobStore, make_blobstore
from common.connections import connect, connect_async
from common.idempotency import IdempotencyStore
from common.job_index import JobIndex
from common.job_store import JobStore
from common.queue import SharedDepthReader, enqueue_restore, make_celery
from common.quotas import QuotaGate
from common.settings import Settings
from common.webhooks import Resolver
from common.workers import AsyncWorkerRegistry
from service.auth import ApiKeyAuth
from service.events import EventStreams
from service.metrics import ApiMetrics

_PUBLISH_THREADS = 4
_DNS_THREADS = 4
_T = TypeVar("_T")


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis  # blocking client, used from the thread pool
    aredis: aioredis.Redis  # event-loop client: the hot read paths and a submission's writes
    jobs: JobStore
    ajobs: AsyncJobStore
    idempotency: IdempotencyStore
    workers: AsyncWorkerRegistry
    blobs: BlobStore
    celery: Celery
    auth: ApiKeyAuth
    metrics: ApiMetrics
    index: JobIndex  # each owner's jobs (GET /v1/jobs)
    quotas: QuotaGate  # per-key active-job cap and submit rate
    events: EventStreams  # GET /v1/jobs/{id}/events: its own Redis client
    # Bounds the memory held by uploads in flight (built in the lifespan, so inside the serving loop).
    upload_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # Queue-depth checks of concurrent submissions share one Redis round trip.
    depth_reader: SharedDepthReader = field(init=False)
    # Celery's producer is blocking, so publishing runs off the loop, on a few threads of its own rather
    # than the shared pool: a burst of 32 uploads otherwise had up to 32 threads contending for the GIL
    # (and for kombu's producer pool) at once, which stretched the tail latency.
    publisher: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=_PUBLISH_THREADS, thread_name_prefix="publish")
    )

    # Name lookups (callback_url, image URLs) block in getaddrinfo, so they run here, on a few threads of
    # their own with a timeout: a caller with a slow DNS server then holds one of these, never the event loop
    # nor the shared pool. ``resolver`` replaces getaddrinfo (tests).
    dns: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=_DNS_THREADS, thread_name_prefix="dns")
    )
    resolver: Resolver | None = None
    # Image URL downloads (one client: building one loads the CA bundle, which blocks).
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(follow_redirects=False))

    def __post_init__(self) -> None:
        self.depth_reader = SharedDepthReader(self.aredis, self.settings.queue_name)

    async def queue_depth(self) -> int:
        return await self.depth_reader.depth()

    async def publish(self, job_id: str) -> Any:
        """Enqueue the job's Celery task on the publisher threads.

        A publish cannot be stopped midway, so a cancelled caller still waits for its outcome (as
        ``run_in_threadpool`` does): a failed publish raises its error; ``CancelledError`` comes out only
        once the message is out, so the caller can tell the two apart and never fails a job that was sent.
        """
        loop = asyncio.get_running_loop()
        # Run in a copy of the request's context, so the publish span (tracing on) joins the request's trace.
        run = contextvars.copy_context().run
        future = loop.run_in_executor(
            self.publisher, run, enqueue_restore, self.celery, self.settings, job_id
        )
        cancelled = False
        while not future.done():
            try:
                await asyncio.wait([future])  # unlike awaiting it, a cancelled wait leaves the future alone
            except asyncio.CancelledError:
                cancelled = True
        if future.cancelled():  # it never ran (the executor shut down): nothing was sent
            raise RuntimeError(f"job {job_id} was not published: the publisher shut down")
        result = future.result()  # a failed publish raises its own error here
        if cancelled:
            raise asyncio.CancelledError
        return result

    async def off_loop_dns(self, fn: Callable[[], _T]) -> _T:
        """Run a name lookup on the DNS threads (the caller bounds the wait with its own timeout)."""
        return await asyncio.get_running_loop().run_in_executor(self.dns, fn)

    @classmethod
    def build(cls, settings: Settings, metrics: ApiMetrics) -> Services:
        sync_client = connect(settings)
        async_client = connect_async(settings)
        return cls(
            settings=settings,
            redis=sync_client,
            aredis=async_client,
            jobs=JobStore(sync_client, settings),
            ajobs=AsyncJobStore(async_client, settings),
            idempotency=IdempotencyStore(async_client, settings.idempotency_ttl_seconds),
            workers=AsyncWorkerRegistry(async_client),
            blobs=make_blobstore(settings, sync_client),
            celery=make_celery(settings),
            auth=ApiKeyAuth(settings),
            metrics=metrics,
            index=JobIndex(async_client, settings.job_ttl_seconds),
            quotas=QuotaGate(async_client, settings),
            events=EventStreams(settings),
            upload_slots=asyncio.Semaphore(settings.max_concurrent_uploads),
        )

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.aredis.aclose()
        await self.http.aclose()
        self.redis.close()
        self.publisher.shutdown(wait=True)
        self.dns.shutdown(wait=False, cancel_futures=True)  # a lookup stuck in a slow resolver is left behind
        self.celery.close()
