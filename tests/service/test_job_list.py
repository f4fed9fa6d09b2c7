"""GET /v1/jobs: the caller's jobs newest first, cursor paging, status filter, expiry (common.job_index)."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from common.job_store import JobStore
from common.keys import job_key, owner_jobs_key
from tests.service.conftest import ClientFactory
from tests.service.test_api import submit

ALICE, BOB = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}


def ids(page: dict) -> list[str]:
    return [job["id"] for job in page["jobs"]]


def test_pages_newest_first_without_repeats_and_per_key(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["key-a", "key-b"])
    mine = [submit(client, headers=ALICE).json()["id"] for _ in range(5)]
    theirs = submit(client, headers=BOB).json()["id"]
    first = client.get("/v1/jobs?limit=2", headers=ALICE)
    assert first.status_code == 200
    page = first.json()
    assert ids(page) == mine[::-1][:2] and page["next_cursor"]
    assert first.headers["link"] == f'<{page["next"]}>; rel="next"'
    newer = submit(client, headers=ALICE).json()["id"]  # an insert between pages shifts nothing
    seen = ids(page)
    while page["next_cursor"]:
        page = client.get(page["next"], headers=ALICE).json()
        seen += ids(page)
    assert seen == mine[::-1] and newer not in seen and theirs not in seen
    assert ids(client.get("/v1/jobs", headers=BOB).json()) == [theirs]
    assert client.get("/v1/jobs").status_code == 401
    doc = client.get("/v1/jobs?limit=1", headers=ALICE).json()["jobs"][0]
    assert doc == client.get(f"/v1/jobs/{newer}", headers=ALICE).json() and "owner" not in doc


def test_status_filter_and_bounds(client: TestClient, store: JobStore) -> None:
    jobs = [submit(client).json()["id"] for _ in range(4)]
    store.mark_running(jobs[1])
    client.post(f"/v1/jobs/{jobs[2]}/cancel")
    running = client.get("/v1/jobs?status=running").json()
    assert ids(running) == [jobs[1]] and running["next_cursor"] is None
    assert ids(client.get("/v1/jobs?status=queued").json()) == [jobs[3], jobs[0]]
    assert ids(client.get("/v1/jobs?status=canceled&limit=1").json()) == [jobs[2]]
    for bad in ("limit=0", "limit=101", "status=done", "cursor=!!!", "cursor=bm9wZQ"):
        resp = client.get(f"/v1/jobs?{bad}")
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_expired_jobs_leave_the_list(client: TestClient, redis_client: redis.Redis) -> None:
    jobs = [submit(client).json()["id"] for _ in range(3)]
    redis_client.delete(job_key(jobs[1]))  # what its TTL does
    assert ids(client.get("/v1/jobs").json()) == [jobs[2], jobs[0]]
    key = owner_jobs_key("anonymous")
    assert redis_client.zscore(key, jobs[1]) is None  # pruned on the way
    redis_client.zadd(key, {"j_" + "o" * 22: 1_000_000})  # older than any job can live: dropped unread
    assert ids(client.get("/v1/jobs?limit=1").json()) == [jobs[2]]  # the page never reaches it...
    assert redis_client.zcard(key) == 2  # ...yet it is gone
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= 2 * client.app_settings.job_ttl_seconds  # the index itself expires when unused
