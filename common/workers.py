"""The registry of live workers: each GPU worker's last heartbeat in the zset ``diffbir:workers``.

Workers beat (``WorkerRegistry``) and ask whether another worker is still alive before taking over its
jobs; the API's /readyz reads the freshest beat and its /metrics counts fresh and stale workers
(``AsyncWorkerRegistry``). A worker deregisters on shutdown; one that vanished is pruned by the next beat of
any worker after ``max_age_s``.

Readiness and liveness are separate: the heartbeat says "a worker is up" (coarse, /readyz), while each
worker's lease (``lease:{worker}``, a key with a short TTL that the worker keeps renewing) says "this worker
still holds its jobs"; a job whose owner's lease expired is requeued within seconds (``worker.recovery``).
"""

from __future__ import annotations

import time

import redis
import redis.asyncio as aioredis

from common.keys import WORKERS_KEY, lease_key


class WorkerRegistry:
    """Sync side, used by the workers."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def beat(self, worker_id: str, now: float | None = None, max_age_s: float = 3600.0) -> None:
        ts = time.time() if now is None else now
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(WORKERS_KEY, {worker_id: ts})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", ts - max_age_s)  # forget long-dead workers
            pipe.execute()

    def remove(self, worker_id: str) -> None:
        self.redis.zrem(WORKERS_KEY, worker_id)

    def last_beat(self, worker_id: str) -> float | None:
        beat = self.redis.zscore(WORKERS_KEY, worker_id)
        return None if beat is None else float(beat)

    def is_alive(self, worker_id: str, max_age_s: float, now: float | None = None) -> bool:
        beat = self.last_beat(worker_id)
        return beat is not None and (time.time() if now is None else now) - beat <= max_age_s

    # --- leases: liveness for job recovery (short TTL), apart from the readiness heartbeat above ---

    def renew_lease(self, worker_id: str, ttl_s: float) -> None:
        """(Re)take this worker's lease for ``ttl_s``; a worker that stops renewing is presumed dead."""
        self.redis.set(lease_key(worker_id), b"1", px=max(1, int(ttl_s * 1000)))

    def drop_lease(self, worker_id: str) -> None:
        self.redis.delete(lease_key(worker_id))

    def has_lease(self, worker_id: str) -> bool:
        return bool(self.redis.exists(lease_key(worker_id)))


class AsyncWorkerRegistry:
    """Event-loop side, used by the API's readiness probe."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def latest_beat(self) -> float | None:
        entries = await self.redis.zrevrange(WORKERS_KEY, 0, 0, withscores=True)
        return float(entries[0][1]) if entries else None

    async def count(self, max_age_s: float, now: float | None = None) -> tuple[int, int]:
        """(fresh, stale) registered workers: heartbeat within ``max_age_s`` or older (one round trip)."""
        cutoff = (time.time() if now is None else now) - max_age_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(WORKERS_KEY, cutoff, "+inf")
            pipe.zcount(WORKERS_KEY, "-inf", f"({cutoff}")
            fresh, stale = await pipe.execute()
        return int(fresh), int(stale)
