"""common.progress_events: entries written with each transition, and a reader blocked in XREAD wakes up as
soon as one is written (no polling)."""

from __future__ import annotations

import asyncio
import threading
import time

import redis
import redis.asyncio as aioredis

from common.job_store import JobStore
from common.jobs import ErrorCode, InputInfo, Job, new_job_id, utcnow
from common.keys import events_key
from common.params import RestoreParams
from common.progress_events import JobEventReader, parse_stream_id
from common.settings import Settings


def make_job(store: JobStore) -> Job:
    job = Job(
        id=new_job_id(), params=RestoreParams(), input=InputInfo(width=8, height=8, format="png"),
        created_at=utcnow(), owner="k_secret_owner",
    )  # fmt: skip
    store.create(job)
    return job


def test_each_transition_appends_one_entry(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    job = make_job(store)
    store.mark_running(job.id)
    store.set_progress(job.id, "sampler", 3, 10)
    entries = redis_client.xrange(events_key(job.id))
    assert [(e[1][b"event"], e[1][b"status"]) for e in entries] == [
        (b"status", b"running"),
        (b"progress", b"running"),
    ]
    assert b"k_secret_owner" not in entries[0][1][b"data"]  # the public document only
    store.fail(job.id, ErrorCode.internal, "boom")
    (last,) = redis_client.xrange(events_key(job.id))  # ended: only the final entry stays
    assert last[1][b"status"] == b"failed"


def test_blocked_reader_wakes_on_the_write(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    job = make_job(store)

    def write_later() -> None:
        time.sleep(0.3)
        store.mark_running(job.id)

    async def read() -> tuple[float, list[str]]:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=30)
        try:
            reader = JobEventReader(client)
            snapshot = await reader.snapshot(job.id)
            assert snapshot.raw is not None and snapshot.last_id is None
            started = time.monotonic()
            events = await reader.read(job.id, "0-0", block_ms=10_000)
            return time.monotonic() - started, [e.status for e in events]
        finally:
            await client.aclose()

    writer = threading.Thread(target=write_later)
    writer.start()
    waited, statuses = asyncio.run(read())
    writer.join()
    assert statuses == ["running"]
    assert 0.2 < waited < 5  # woken by the write, long before the 10 s block ends


def test_parse_stream_id() -> None:
    assert parse_stream_id("1764500000123-4") == (1764500000123, 4)
    assert parse_stream_id(" 5-0 ") == (5, 0)
    for bad in (None, "", "5", "a-b", "5-0-1", "1" * 30 + "-0"):
        assert parse_stream_id(bad) is None
