"""The status route's read path: `public_document` equals the exact (pydantic) answer; reads coalesce."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis
import redis.exceptions

from common.async_job_store import AsyncJobStore
from common.jobs import InputInfo, Job, new_job_id, public_document, utcnow
from common.keys import job_key
from common.params import RestoreParams


def make_job(owner: str, prompt: str = "") -> Job:
    params = RestoreParams.model_validate({"prompt": prompt})
    info = InputInfo(width=8, height=8, format="png", bytes=10)
    return Job(id=new_job_id(), params=params, input=info, created_at=utcnow(), owner=owner)


def test_matches_pydantic_and_checks_the_owner() -> None:
    # The prompt tries to look like an owner field; it is escaped inside its JSON string.
    for prompt in ["", 'x","owner":"k_evil"}', 'é \\ "quoted"']:
        job = make_job("k_0123abcd", prompt)
        raw = job.to_redis().encode()
        body = public_document(raw, "k_0123abcd")
        assert body == job.model_dump_json(exclude={"owner"}).encode()
        assert json.loads(body) == job.public_dict()
        assert public_document(raw, "k_evil") is None
        assert public_document(raw, "anonymous") is None


def test_other_document_shapes_take_the_exact_path() -> None:
    job = make_job("anonymous")
    reordered = json.dumps({"owner": "anonymous", **job.public_dict()}).encode()  # owner not last
    assert json.loads(public_document(reordered, "anonymous") or b"") == job.public_dict()
    assert public_document(reordered, "k_other") is None


def test_concurrent_reads_share_one_mget(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await client.set(job_key("j_a"), b"A")
        await client.set(job_key("j_b"), b"B")
        store = AsyncJobStore(client)
        calls: list[list[str]] = []
        mget = client.mget

        async def counting_mget(keys: list[str]) -> list[bytes | None]:
            calls.append(keys)
            return await mget(keys)

        client.mget = counting_mget  # type: ignore[method-assign]
        got = await asyncio.gather(*(store.get_raw(i) for i in ["j_a", "j_b", "j_a", "j_missing"]))
        assert got == [b"A", b"B", b"A", None]
        assert calls == [[job_key("j_a"), job_key("j_b"), job_key("j_missing")]]
        assert await store.get_raw("j_b") == b"B"  # a lone read is not held back
        assert len(calls) == 2

        async def broken_mget(keys: list[str]) -> list[bytes | None]:
            raise redis.exceptions.ConnectionError("down")

        client.mget = broken_mget  # type: ignore[method-assign]
        results = await asyncio.gather(store.get_raw("j_a"), store.get_raw("j_b"), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
        await client.aclose()

    asyncio.run(scenario())
