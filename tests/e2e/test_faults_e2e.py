"""Fault tests on the real processes: a worker killed mid-sampling, Redis restarted mid-run, hostile inputs.

Run on the Redis storage backend only (the faults are in the queue/record path, which both backends share).
"""

from __future__ import annotations

import contextlib
import signal
import time

import httpx
import pytest
import redis

from common.blobstore import RedisBlobStore, input_key
from common.job_store import JobStore
from common.jobs import InputInfo, Job, new_job_id, utcnow
from common.params import RestoreParams
from common.queue import enqueue_restore, make_celery, queue_depth
from common.settings import Settings
from tests.common import images
from tests.e2e.conftest import VISIBILITY_S, Stack, wait_until
from tests.worker.conftest import png_bytes

pytestmark = pytest.mark.parametrize("stack", ["redis"], indirect=True)

IMAGE = png_bytes(32, 32, (30, 60, 90))


def test_worker_killed_mid_sampling_job_is_redelivered_and_completes(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, steps=100)
    live_stack.wait_sampling(job_id)
    live_stack.worker.signal(signal.SIGKILL)
    live_stack.worker.proc.wait(timeout=10)  # type: ignore[union-attr]
    assert live_stack.raw_job(job_id)["status"] == "running"  # the record alone cannot tell it died

    live_stack.start_worker()  # the replacement (an orchestrator's restart)
    doc = live_stack.wait_status(job_id, timeout_s=VISIBILITY_S + 60)
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 2
    assert doc["progress"]["fraction"] == 1.0


def test_redis_restart_mid_run_api_503_then_recovers_nothing_lost(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, steps=100)
    live_stack.wait_sampling(job_id)
    server = live_stack.redis_server
    with contextlib.suppress(redis.ConnectionError):
        live_stack.redis.shutdown(save=True)  # a persistent Redis restarting: the snapshot survives
    assert server.proc is not None
    server.proc.wait(timeout=10)
    try:
        resp = live_stack.http.get(f"/v1/jobs/{job_id}", headers=live_stack.headers())
        assert resp.status_code == 503, resp.text
        assert "Retry-After" in resp.headers
        assert live_stack.http.get("/readyz").status_code == 503
        assert live_stack.submit(IMAGE).status_code == 503
        time.sleep(1.0)
    finally:
        server.start()
    doc = live_stack.wait_status(job_id, timeout_s=60)
    assert doc["status"] == "succeeded", doc
    assert live_stack.worker.alive
    # The consumer reconnected: new work flows again, and readiness comes back.
    after = live_stack.submit_ok(IMAGE)
    assert live_stack.wait_status(after, timeout_s=60)["status"] == "succeeded"
    wait_until(lambda: live_stack.http.get("/readyz").status_code == 200, 15, 0.2, what="readyz")


def test_hostile_inputs_never_crash_the_worker(live_stack: Stack) -> None:
    """Bypass the API's validation: write hostile blobs straight into storage and enqueue them."""
    settings = Settings(redis_url=live_stack.redis_server.url)
    client = redis.Redis.from_url(settings.redis_url)
    store, blobs = JobStore(client, settings), RedisBlobStore(client, 3600)
    app = make_celery(settings)
    hostile = {
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "png_bomb": images.png_header_bomb(),
        "truncated_png": png_bytes(64, 64)[:80],
        "gif": images.animated_gif(),
        "tiny_1x1": png_bytes(1, 1),
        "strip_2x64": png_bytes(2, 64),
    }
    job_ids: dict[str, str] = {}
    try:
        for name, data in hostile.items():
            job = Job(
                id=new_job_id(),
                params=RestoreParams(steps=2, upscale=2),
                input=InputInfo(width=1, height=1, format="png"),
                created_at=utcnow(),
            )
            store.create(job)
            blobs.put(input_key(job.id), data, "image/png")
            enqueue_restore(app, settings, job.id)
            job_ids[name] = job.id
        # Malformed messages: a path as job id, a non-string, and the wrong number of arguments.
        for args in (["../../etc/passwd"], [None], [], ["j_a", "extra"]):
            app.send_task(settings.task_name, args=args, queue=settings.queue_name)
        for name, job_id in job_ids.items():
            doc = live_stack.wait_raw_status(job_id, timeout_s=60)  # owner-less jobs: read Redis directly
            if name.startswith(("tiny", "strip")):  # valid but odd images: restored or refused as bad input
                assert doc["status"] == "succeeded" or doc["error"]["code"] == "bad_input", (name, doc)
            else:
                assert doc["status"] == "failed" and doc["error"]["code"] == "bad_input", (name, doc)
    finally:
        app.close()
        client.close()
    wait_until(lambda: queue_depth(live_stack.redis, "gpu") == 0, 30, what="malformed messages consumed")
    assert live_stack.worker.alive
    ok = live_stack.submit_ok(IMAGE)
    assert live_stack.wait_status(ok)["status"] == "succeeded"
    assert httpx.get(f"http://127.0.0.1:{live_stack.metrics_port}/metrics", timeout=5).status_code == 200
