"""A crash at each named step of a job's lifecycle (``common.faults``): the real process SIGKILLs itself
there, is restarted with the same environment (as an orchestrator would), and the job still ends
``succeeded`` exactly once with a valid result.

Worker points: the worker dies holding the job; its lease lapses (2 s here) and the restarted worker runs the
job again (or finds it finished). API points: the client's request dies with the API; the client retries
with the same Idempotency-Key and gets the same job, which the outbox sweep publishes if it never was.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.faults import POINTS
from tests.e2e.conftest import Stack, wait_until
from tests.worker.conftest import Receiver, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("stack", ["redis"], indirect=True)]

IMAGE = png_bytes(32, 32, (200, 30, 90))
API_POINTS = ["after_store", "after_publish"]
WORKER_POINTS = [p for p in POINTS if p not in API_POINTS]
# A webhook POST cut off by the crash is sent again by another sender (at least once, same webhook-id).
WEBHOOK_MAY_REPEAT = ("during_webhook",)


def _armed(point: str, tmp_path: Path) -> dict[str, str]:
    return {"DIFFBIR_FAULT_POINT": point, "DIFFBIR_FAULT_ONCE_FILE": str(tmp_path / f"fired-{point}")}


def _assert_succeeded_once(stack: Stack, job_id: str, crashed: Path) -> None:
    assert crashed.exists(), "the fault point was never reached"
    doc = stack.wait_status(job_id, timeout_s=120)
    assert doc["status"] == "succeeded", doc
    assert doc["error"] is None and doc["result"]["width"] == 64
    resp = stack.http.get(f"/v1/jobs/{job_id}/result", headers=stack.headers())
    assert resp.status_code == 200
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.size == (64, 64)
    # Exactly once: the record never moves again (a late duplicate delivery is skipped, and the fenced
    # attempt of the dead worker cannot write), and nothing is left to run it again.
    time.sleep(3)
    again = stack.job(job_id)
    assert again["status"] == "succeeded" and again["finished_at"] == doc["finished_at"], again
    assert stack.redis.zscore("diffbir:outbox", job_id) is None


@pytest.mark.parametrize("point", WORKER_POINTS)
def test_worker_crash_at_each_point_still_succeeds_once(
    live_stack: Stack, point: str, tmp_path: Path
) -> None:
    live_stack.worker.stop()
    env = _armed(point, tmp_path)
    live_stack.start_worker(**env)
    receiver = Receiver()
    try:
        fields = {"steps": 30} if point == "mid_sampling" else {}
        job_id = live_stack.submit_ok(IMAGE, callback_url=receiver.url, **fields)
        assert live_stack.worker.proc is not None
        live_stack.worker.proc.wait(timeout=120)  # it killed itself at the point
        live_stack.start_worker(**env)  # the orchestrator's restart, same environment
        _assert_succeeded_once(live_stack, job_id, Path(env["DIFFBIR_FAULT_ONCE_FILE"]))
        # The webhook is queued with the status write (durable), so it arrives whatever the crash point.
        wait_until(lambda: _succeeded_hooks(receiver), 30, 0.2, what="the job.completed webhook")
        time.sleep(1)
        hooks = _succeeded_hooks(receiver)
        assert len({headers.get("webhook-id") for headers in hooks}) == 1
        assert len(hooks) >= 1 if point in WEBHOOK_MAY_REPEAT else len(hooks) == 1
    finally:
        receiver.close()
        if not live_stack.worker.alive:
            live_stack.start_worker()  # its point fired already: it runs like an unarmed worker


@pytest.mark.parametrize("point", API_POINTS)
def test_api_crash_at_each_point_still_succeeds_once(live_stack: Stack, point: str, tmp_path: Path) -> None:
    live_stack.api.stop()
    env = _armed(point, tmp_path)
    live_stack.start_api(**env)
    before = len(list(live_stack.redis.scan_iter("diffbir:job:*")))
    key = {"Idempotency-Key": f"fault-{point}-{time.time()}"}
    try:
        with pytest.raises(httpx.TransportError):  # the API died mid-request
            live_stack.submit(IMAGE, headers=key)
        assert live_stack.api.proc is not None
        live_stack.api.proc.wait(timeout=30)
        live_stack.start_api(**env)
        retry = wait_until(lambda: _retry(live_stack, key), 30, 0.5, what="idempotent retry accepted")
        job_id = retry.json()["id"]
        assert retry.headers.get("Idempotent-Replayed") == "true"  # the same job, not a second one
        _assert_succeeded_once(live_stack, job_id, Path(env["DIFFBIR_FAULT_ONCE_FILE"]))
        assert len(list(live_stack.redis.scan_iter("diffbir:job:*"))) == before + 1
    finally:
        if not live_stack.api.alive:
            live_stack.start_api()


def _retry(stack: Stack, headers: dict[str, str]) -> httpx.Response | None:
    resp = stack.submit(IMAGE, headers=headers)
    return resp if resp.status_code == 202 else None


def _succeeded_hooks(receiver: Receiver) -> list[dict[str, str]]:
    seen = list(receiver.requests)
    return [{k.lower(): v for k, v in h.items()} for h, body in seen if b'"job.completed"' in body]
