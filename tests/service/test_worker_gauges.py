"""The API's worker gauges: the heartbeat registry read the way /readyz reads it, on every scrape."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from common.job_store import JobStore
from common.workers import WorkerRegistry
from tests.service.conftest import ClientFactory


def gauge(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_workers_ready_and_stale_follow_the_heartbeats(make_client: ClientFactory, store: JobStore) -> None:
    client: TestClient = make_client(worker_heartbeat_max_age_s=60)
    text = client.get("/metrics").text
    assert gauge(text, "diffbir_workers_ready") == 0 and gauge(text, "diffbir_workers_stale") == 0
    now = time.time()
    workers = WorkerRegistry(store.redis)
    workers.beat("fresh-1", now=now)
    workers.beat("fresh-2", now=now - 50)
    workers.beat("crashed", now=now - 600)  # never deregistered
    text = client.get("/metrics").text
    assert gauge(text, "diffbir_workers_ready") == 2
    assert gauge(text, "diffbir_workers_stale") == 1
    workers.remove("crashed")  # a worker that stops normally deregisters
    workers.remove("fresh-1")
    text = client.get("/metrics").text
    assert gauge(text, "diffbir_workers_ready") == 1 and gauge(text, "diffbir_workers_stale") == 0
    assert client.get("/readyz").status_code == 200  # the same rule: one fresh heartbeat is ready
