"""The process-wide clients the routes use, built once in the app's lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
from celery import Celery

from common.blobstore import BlobStore, make_blobstore
from common.jobs import AsyncJobStore, JobStore, connect, connect_async
from common.queue import SharedDepthReader, make_celery
from common.settings import Settings
from service.auth import ApiKeyAuth
from service.metrics import ApiMetrics


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis  # blocking client, used from the thread pool
    aredis: aioredis.Redis  # event-loop client for the hot read paths
    jobs: JobStore
    ajobs: AsyncJobStore
    blobs: BlobStore
    celery: Celery
    auth: ApiKeyAuth
    metrics: ApiMetrics
    # Bounds the memory held by uploads in flight (built in the lifespan, so inside the serving loop).
    upload_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # Queue-depth checks of concurrent submissions share one Redis round trip.
    depth_reader: SharedDepthReader = field(init=False)

    def __post_init__(self) -> None:
        self.depth_reader = SharedDepthReader(self.aredis, self.settings.queue_name)

    async def queue_depth(self) -> int:
        return await self.depth_reader.depth()

    @classmethod
    def build(cls, settings: Settings, metrics: ApiMetrics) -> Services:
        sync_client = connect(settings)
        async_client = connect_async(settings)
        return cls(
            settings=settings,
            redis=sync_client,
            aredis=async_client,
            jobs=JobStore(sync_client, settings),
            ajobs=AsyncJobStore(async_client),
            blobs=make_blobstore(settings, sync_client),
            celery=make_celery(settings),
            auth=ApiKeyAuth(settings),
            metrics=metrics,
            upload_slots=asyncio.Semaphore(settings.max_concurrent_uploads),
        )

    async def aclose(self) -> None:
        await self.aredis.aclose()
        self.redis.close()
        self.celery.close()
