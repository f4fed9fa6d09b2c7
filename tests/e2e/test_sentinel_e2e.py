"""Redis failover under load: a real API and worker configured with Redis Sentinel; the master is killed
with SIGKILL while jobs run and more arrive. Jobs keep flowing on the promoted replica and none is lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import redis

from common.connections import connect
from common.settings import Settings
from tests.conftest import free_port
from tests.e2e.conftest import API_KEYS, TERMINAL, ManagedProcess, _base_env, wait_until
from tests.sentinel import MASTER_NAME, SentinelCluster
from tests.worker.conftest import png_bytes

pytestmark = pytest.mark.slow

IMAGE = png_bytes(32, 32, (10, 120, 240))
AUTH = {"Authorization": f"Bearer {API_KEYS[0]}"}


def _call(fn):  # type: ignore[no-untyped-def]
    """A client call through the failover: 503 (Redis away) and dropped connections are retried."""

    def attempt():  # type: ignore[no-untyped-def]
        try:
            resp = fn()
        except httpx.TransportError:
            return None
        return resp if resp.status_code not in (502, 503) else None

    return wait_until(attempt, 60, 0.3, what="the API through the failover")


def test_jobs_keep_flowing_through_a_master_failover(
    sentinel_cluster: SentinelCluster, tmp_path: Path
) -> None:
    env = _base_env("redis://ignored:1/0")
    env.update(
        DIFFBIR_REDIS_SENTINELS=json.dumps(sentinel_cluster.sentinels),
        DIFFBIR_REDIS_SENTINEL_MASTER=MASTER_NAME,
        DIFFBIR_MAX_QUEUE_DEPTH="100",
        DIFFBIR_WORKER_METRICS_PORT="0",
        DIFFBIR_WORKER_ID="w-sentinel",
    )
    settings = Settings(
        redis_url="redis://ignored:1/0",
        redis_sentinels=sentinel_cluster.sentinels,
        redis_sentinel_master=MASTER_NAME,
    )
    probe = connect(settings)
    api_port = free_port()
    worker = ManagedProcess("worker", [sys.executable, "-m", "worker"], env, tmp_path)
    api_env = dict(env, DIFFBIR_PORT=str(api_port), DIFFBIR_HOST="127.0.0.1")
    api = ManagedProcess("api", [sys.executable, "-m", "service"], api_env, tmp_path)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    try:
        worker.start()
        api.start()

        def worker_ready() -> bool:
            assert worker.alive, worker.tail()
            try:
                return probe.zscore("diffbir:workers", "w-sentinel") is not None
            except redis.RedisError:
                return False

        wait_until(worker_ready, 180, 0.3, what="worker ready")
        wait_until(lambda: _healthy(http), 60, 0.2, what="API up")

        def submit(i: int) -> str:
            resp = _call(
                lambda: http.post(
                    "/v1/restore",
                    files={"image": ("in.png", IMAGE, "image/png")},
                    data={"steps": "8", "upscale": "2", "seed": str(i)},
                    headers={**AUTH, "Idempotency-Key": f"sentinel-{i}"},
                )
            )
            assert resp.status_code == 202, resp.text
            return str(resp.json()["id"])

        before = [submit(i) for i in range(4)]
        wait_until(lambda: _status(http, before[0]) == "running", 60, 0.1, what="first job running")
        sentinel_cluster.wait_replicated()
        sentinel_cluster.kill_master()
        after = [submit(i) for i in range(4, 8)]

        def all_done() -> bool:
            return all(_status(http, job_id) in TERMINAL for job_id in before + after)

        wait_until(all_done, 240, 0.5, what=f"every job finished\n{worker.tail(40)}")
        statuses = {job_id: _status(http, job_id) for job_id in before + after}
        assert set(statuses.values()) == {"succeeded"}, statuses
        assert worker.alive and api.alive
    finally:
        http.close()
        api.stop()
        worker.stop()
        probe.close()


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _status(http: httpx.Client, job_id: str) -> str:
    resp = _call(lambda: http.get(f"/v1/jobs/{job_id}", headers=AUTH))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["status"])
