"""SharedDepthReader: concurrent queue-depth checks share one Redis round trip, never a stale answer."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from common.queue import SharedDepthReader


class CountingClient:
    """Wraps an async Redis client and counts the pipelines executed (one per round trip)."""

    def __init__(self, client: aioredis.Redis, delay_s: float = 0.0):
        self.client = client
        self.delay_s = delay_s
        self.round_trips = 0
        self.fail_next = False

    def pipeline(self, transaction: bool = False) -> CountingPipeline:
        return CountingPipeline(self, self.client.pipeline(transaction=transaction))


class CountingPipeline:
    def __init__(self, owner: CountingClient, pipe: aioredis.client.Pipeline):
        self.owner, self.pipe = owner, pipe

    async def __aenter__(self) -> CountingPipeline:
        await self.pipe.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pipe.__aexit__(*exc)

    def llen(self, name: str) -> None:
        self.pipe.llen(name)

    async def execute(self) -> list[int]:
        self.owner.round_trips += 1
        await asyncio.sleep(self.owner.delay_s)
        if self.owner.fail_next:
            self.owner.fail_next = False
            raise redis.ConnectionError("redis went away")
        return await self.pipe.execute()


def run(redis_url: str, scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_concurrent_callers_share_one_round_trip_and_later_ones_read_afresh(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.rpush("gpu", b"a", b"b")
    redis_client.rpush("gpu\x06\x163", b"c")

    async def scenario(client: aioredis.Redis) -> None:
        counting = CountingClient(client, delay_s=0.02)
        reader = SharedDepthReader(counting, "gpu")
        assert await asyncio.gather(*(reader.depth() for _ in range(32))) == [3] * 32
        assert counting.round_trips == 1
        await asyncio.to_thread(redis_client.rpush, "gpu", b"d")
        assert await reader.depth() == 4  # a lookup that starts after the change sees it
        assert counting.round_trips == 2

    run(redis_url, scenario)


def test_a_canceled_caller_does_not_fail_the_others(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.rpush("gpu", b"a")

    async def scenario(client: aioredis.Redis) -> None:
        counting = CountingClient(client, delay_s=0.05)
        reader = SharedDepthReader(counting, "gpu")
        first = asyncio.ensure_future(reader.depth())
        second = asyncio.ensure_future(reader.depth())
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert counting.round_trips == 1

    run(redis_url, scenario)


def test_an_error_reaches_every_waiter_and_the_next_call_retries(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis) -> None:
        counting = CountingClient(client, delay_s=0.01)
        counting.fail_next = True
        reader = SharedDepthReader(counting, "gpu")
        results = await asyncio.gather(reader.depth(), reader.depth(), return_exceptions=True)
        assert all(isinstance(r, redis.ConnectionError) for r in results)
        assert await reader.depth() == 0
        assert counting.round_trips == 2

    run(redis_url, scenario)
