"""Idempotency-Key claims: which job a client's key made, so a retried submission gets the same job.

The API's only user of these keys runs on the event loop, so there is one (async) implementation.
A claim is a SET NX of ``{job_id, fingerprint, created_at}`` under ``idem:{owner}:{hash(key)}``; a request
that finds another's claim replays that job (same fingerprint) or is refused (different one). A claim whose
submission failed is released so the client can retry with the same key; one whose API process died before
storing its job can be taken over (compare-and-set) by an identical request later (``service.submit``).
"""

from __future__ import annotations

import json
import time

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from common.keys import idempotency_key


class IdempotencyRecord(BaseModel):
    job_id: str
    fingerprint: str
    created_at: float = Field(default_factory=time.time)  # unix seconds; tells an abandoned claim apart


class IdempotencyStore:
    """Claim, take over and release Idempotency-Keys; each key lives ``ttl_s`` from its claim."""

    def __init__(self, client: aioredis.Redis, ttl_s: int):
        self.redis = client
        self.ttl_s = ttl_s

    async def claim(self, owner: str, key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """SET NX: None when this request now owns the key, else the record of the request that did."""
        name = idempotency_key(owner, key)
        doc = record.model_dump_json()
        if await self.redis.set(name, doc, ex=self.ttl_s, nx=True):
            return None
        raw = await self.redis.get(name)
        if raw is None:  # expired between SET and GET: try once more
            if await self.redis.set(name, doc, ex=self.ttl_s, nx=True):
                return None
            raw = await self.redis.get(name) or doc
        return IdempotencyRecord.model_validate_json(raw)

    async def replace(
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
                pipe.set(name, record.model_dump_json(), ex=self.ttl_s)
                await pipe.execute()
                return True
            except redis.WatchError:
                return False

    async def release(self, owner: str, key: str, job_id: str) -> None:
        """Forget a claim whose submission failed, so the client can retry with the same key."""
        name = idempotency_key(owner, key)
        raw = await self.redis.get(name)
        if raw is not None and json.loads(raw).get("job_id") == job_id:
            await self.redis.delete(name)
