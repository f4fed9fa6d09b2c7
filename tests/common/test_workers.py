"""The registry of live workers (common.workers): beats, pruning, liveness, the freshest beat for /readyz."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from common.keys import WORKERS_KEY
from common.workers import AsyncWorkerRegistry, WorkerRegistry


def test_beats_prune_long_dead_workers(redis_client: redis.Redis) -> None:
    workers = WorkerRegistry(redis_client)
    workers.beat("w1", now=1000.0)
    workers.beat("w2", now=5000.0)  # prunes w1 (older than an hour)
    assert redis_client.zrange(WORKERS_KEY, 0, -1) == [b"w2"]
    workers.remove("w2")
    assert redis_client.zcard(WORKERS_KEY) == 0


def test_liveness_and_latest_beat(redis_client: redis.Redis, redis_url: str) -> None:
    workers = WorkerRegistry(redis_client)
    workers.beat("w-old", now=1000.0)
    workers.beat("w-new", now=1030.0)
    assert workers.is_alive("w-new", max_age_s=10, now=1035.0)
    assert not workers.is_alive("w-old", max_age_s=10, now=1035.0)
    assert not workers.is_alive("w-never", max_age_s=10, now=1035.0)
    assert workers.last_beat("w-old") == 1000.0

    async def latest() -> float | None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await AsyncWorkerRegistry(client).latest_beat()
        finally:
            await client.aclose()

    assert asyncio.run(latest()) == 1030.0
    workers.remove("w-old")
    workers.remove("w-new")
    assert asyncio.run(latest()) is None
