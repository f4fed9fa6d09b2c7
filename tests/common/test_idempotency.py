"""Idempotency-Key claims (common.idempotency) on a real Redis: claim, replay, take over, release."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from common.idempotency import IdempotencyRecord, IdempotencyStore
from common.keys import idempotency_key

A = IdempotencyRecord(job_id="j_a" + "a" * 21, fingerprint="f1")
B = IdempotencyRecord(job_id="j_b" + "b" * 21, fingerprint="f2")


def run(redis_url: str, scenario: Callable[[IdempotencyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await scenario(IdempotencyStore(client, ttl_s=600))
        finally:
            await client.aclose()

    asyncio.run(main())


def test_claim_and_release(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(keys: IdempotencyStore) -> None:
        assert await keys.claim("o1", "key-1", A) is None
        assert 0 < redis_client.ttl(idempotency_key("o1", "key-1")) <= 600
        assert await keys.claim("o1", "key-1", B) == A
        assert await keys.claim("o2", "key-1", B) is None  # keys are per owner
        await keys.release("o1", "key-1", B.job_id)  # not ours: kept
        assert await keys.claim("o1", "key-1", B) == A
        await keys.release("o1", "key-1", A.job_id)
        assert await keys.claim("o1", "key-1", B) is None

    run(redis_url, scenario)


def test_replace_is_a_compare_and_set(redis_url: str) -> None:
    async def scenario(keys: IdempotencyStore) -> None:
        assert await keys.claim("o1", "key-2", A) is None
        assert not await keys.replace("o1", "key-2", B, A)  # the key holds A, not B
        assert await keys.replace("o1", "key-2", A, B)
        assert await keys.claim("o1", "key-2", A) == B
        assert not await keys.replace("o1", "missing", A, B)

    run(redis_url, scenario)
