"""Per-key quotas at submit: active-job cap and sliding-window rate, 429 with Retry-After and RateLimit-*."""

from __future__ import annotations

import asyncio

import redis

from common.job_store import JobStore
from common.jobs import ErrorCode
from common.keys import active_jobs_key
from common.quotas import QuotaGate
from common.settings import Settings
from tests.service.conftest import ClientFactory
from tests.service.test_api import submit

ALICE, BOB = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}


def test_active_cap_per_key_released_when_jobs_end(make_client: ClientFactory, store: JobStore) -> None:
    client = make_client(api_keys=["key-a", "key-b"], max_active_jobs_per_key=2, retry_after_seconds=9)
    first, second = (submit(client, headers=ALICE).json()["id"] for _ in range(2))
    refused = submit(client, headers=ALICE)
    assert refused.status_code == 429 and refused.json()["code"] == "active_jobs_limit"
    assert refused.headers["retry-after"] == "9"
    assert submit(client, headers=BOB).status_code == 202  # another key is not affected
    store.mark_running(first)
    assert submit(client, headers=ALICE).status_code == 429  # running still counts
    store.fail(first, ErrorCode.internal, "boom")
    assert submit(client, headers=ALICE).status_code == 202
    client.post(f"/v1/jobs/{second}/cancel", headers=ALICE)  # canceled while queued: released too
    assert submit(client, headers=ALICE).status_code == 202
    assert submit(client, headers=ALICE).status_code == 429


def test_submit_rate_headers_and_refusal(make_client: ClientFactory) -> None:
    client = make_client(submit_rate_per_key=2, submit_rate_window_s=30, max_active_jobs_per_key=0)
    ok = submit(client)
    assert ok.status_code == 202
    assert ok.headers["ratelimit-limit"] == "2" and ok.headers["ratelimit-remaining"] == "1"
    assert ok.headers["ratelimit-policy"] == "2;w=30" and 0 < int(ok.headers["ratelimit-reset"]) <= 30
    assert submit(client).headers["ratelimit-remaining"] == "0"
    refused = submit(client)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 30 and refused.headers["ratelimit-remaining"] == "0"


def test_idempotent_replay_takes_no_quota(make_client: ClientFactory) -> None:
    client = make_client(max_active_jobs_per_key=1)
    first = submit(client, headers={"Idempotency-Key": "k"})
    again = submit(client, headers={"Idempotency-Key": "k"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = submit(client, headers={"Idempotency-Key": "k2"})
    assert other.status_code == 429
    # The refused request released its Idempotency-Key: the same key works once there is room.
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")
    assert submit(client, headers={"Idempotency-Key": "k2"}).status_code == 202


def test_admission_is_atomic_under_concurrency(redis_url: str, redis_client: redis.Redis) -> None:
    """50 concurrent admissions against a cap of 7: exactly 7 get in (one Lua call each, no overshoot)."""
    import redis.asyncio as aioredis

    async def run() -> list[bool]:
        client = aioredis.Redis.from_url(redis_url)
        gate = QuotaGate(client, Settings(redis_url=redis_url, max_active_jobs_per_key=7))
        try:
            results = await asyncio.gather(*(gate.admit("k_x", f"j_{n:022d}") for n in range(50)))
        finally:
            await client.aclose()
        return [r.allowed for r in results]

    assert sum(asyncio.run(run())) == 7
    assert redis_client.zcard(active_jobs_key("k_x")) == 7


def test_quotas_off_write_nothing(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    client = make_client(max_active_jobs_per_key=0, submit_rate_per_key=0)
    for _ in range(3):
        resp = submit(client)
        assert resp.status_code == 202 and "ratelimit-limit" not in resp.headers
    assert not redis_client.exists(active_jobs_key("anonymous"))
