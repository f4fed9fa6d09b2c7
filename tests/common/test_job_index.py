"""common.job_index: paging stays exact with equal creation times; cursors are opaque but checked."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from common.job_index import BadCursorError, Cursor, JobIndex
from common.jobs import InputInfo, Job, new_job_id
from common.keys import job_key
from common.params import RestoreParams


def test_cursor_round_trip_and_refusals() -> None:
    cursor = Cursor(1_764_500_000_123_456, "j_" + "x" * 22)
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "!!!", "bm9wZQ", Cursor(1, "j_a").encode().upper()):
        with pytest.raises(BadCursorError):
            Cursor.decode(bad)


def test_paging_is_exact_when_jobs_share_a_microsecond(redis_url: str, redis_client: redis.Redis) -> None:
    # Now, not a fixed date: a first-page read drops entries older than 2 x ttl_s (here 2 h), so a fixed
    # creation time made this test fail two hours after that time.
    same = datetime.now(UTC).replace(microsecond=0)
    jobs = [
        Job(
            id=new_job_id(),
            params=RestoreParams(),
            input=InputInfo(width=8, height=8, format="png"),
            created_at=same,
            owner="k_o",
        )
        for _ in range(7)
    ]
    for job in jobs:
        redis_client.set(job_key(job.id), job.to_redis())

    async def walk() -> list[str]:
        client = aioredis.Redis.from_url(redis_url)
        index = JobIndex(client, ttl_s=3600)
        try:
            for job in jobs:
                await index.add(job)
            seen: list[str] = []
            cursor = None
            while True:
                page = await index.page("k_o", limit=2, cursor=cursor)
                seen += [json.loads(document)["id"] for document in page.documents]
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor
        finally:
            await client.aclose()

    seen = asyncio.run(walk())
    assert seen == sorted((job.id for job in jobs), reverse=True)  # each once, ties by id descending
