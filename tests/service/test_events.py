"""GET /v1/jobs/{id}/events: Server-Sent Events from the job's Redis stream (common.progress_events)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from common.job_store import JobStore
from common.jobs import ErrorCode, ResultInfo, result_url
from common.keys import events_key
from common.progress_events import STREAM_MAXLEN, Snapshot
from service.events import start_from
from tests.service.conftest import ClientFactory
from tests.service.test_api import submit

Event = dict[str, str]


def read_stream(
    client: TestClient,
    job_id: str,
    headers: dict[str, str] | None = None,
    first_event: threading.Event | None = None,
) -> tuple[list[Event], str]:
    """The events of one connection (it must end by itself) and the raw text (comments included).

    ``first_event`` is set once the first event has arrived (the stream's snapshot is taken), so changes
    made after it must come as live events, however slowly the machine runs."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers or {}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = ""
        for chunk in resp.iter_text():
            text += chunk
            if first_event is not None and "data:" in text and "\n\n" in text.replace("\r\n", "\n"):
                first_event.set()
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            events.append(fields)
    return events, text


def later(
    delay_s: float, *steps: Callable[[], object], after: threading.Event | None = None
) -> threading.Thread:
    def run() -> None:
        if after is not None:
            assert after.wait(30), "the stream never sent its first event"
        time.sleep(delay_s)
        for step in steps:
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def succeed(store: JobStore, job_id: str) -> None:
    info = ResultInfo(url=result_url(job_id), content_type="image/png", width=4, height=4)
    store.succeed(job_id, info)


def test_live_status_and_progress_until_terminal(make_client: ClientFactory, store: JobStore) -> None:
    client = make_client(event_stream_ping_s=0.2)
    job_id = submit(client).json()["id"]
    opened = threading.Event()
    worker = later(
        0.7,
        lambda: store.mark_running(job_id),
        lambda: store.set_progress(job_id, "sampler", 1, 2),
        lambda: store.set_progress(job_id, "sampler", 2, 2),
        lambda: succeed(store, job_id),
        after=opened,
    )
    events, text = read_stream(client, job_id, first_event=opened)
    worker.join()
    docs = [json.loads(e["data"]) for e in events]
    assert [e["event"] for e in events] == ["status", "status", "progress", "progress", "status"]
    assert [d["status"] for d in docs] == ["queued", "running", "running", "running", "succeeded"]
    assert [d["progress"]["step"] for d in docs[2:4]] == [1, 2]
    assert all(d["id"] == job_id and "owner" not in d for d in docs)
    assert events[0]["id"] == "0-0" and all(e["id"] for e in events)
    assert ": ping" in text  # keep-alive comments while the job waited


def test_last_event_id_resumes_after_it(
    client: TestClient, store: JobStore, redis_client: redis.Redis
) -> None:
    job_id = submit(client).json()["id"]
    store.mark_running(job_id)
    store.set_progress(job_id, "sampler", 1, 2)
    store.set_progress(job_id, "sampler", 2, 2)
    history = [entry_id.decode() for entry_id, _ in redis_client.xrange(events_key(job_id))]
    worker = later(0.5, lambda: store.fail(job_id, ErrorCode.internal, "boom"))
    resumed, _ = read_stream(client, job_id, {"Last-Event-ID": history[0]})
    worker.join()
    assert [e["event"] for e in resumed] == ["progress", "progress", "status"]
    assert [e["id"] for e in resumed[:2]] == history[1:]
    assert json.loads(resumed[-1]["data"])["status"] == "failed"
    # Ended: the stream keeps its final entry only; a finished job sends its state once, then ends.
    assert redis_client.xlen(events_key(job_id)) == 1
    everything, _ = read_stream(client, job_id)
    assert [json.loads(e["data"])["status"] for e in everything] == ["failed"]
    late, _ = read_stream(client, job_id, {"Last-Event-ID": history[0]})  # trimmed since: a snapshot
    assert [json.loads(e["data"])["status"] for e in late] == ["failed"]
    junk, _ = read_stream(client, job_id, {"Last-Event-ID": "not-an-id"})
    assert len(junk) == 1 and json.loads(junk[0]["data"])["status"] == "failed"


def test_stream_cap_and_expiry(client: TestClient, store: JobStore, redis_client: redis.Redis) -> None:
    job_id = submit(client).json()["id"]
    store.mark_running(job_id)
    for step in range(STREAM_MAXLEN * 2):
        store.set_progress(job_id, "sampler", step, STREAM_MAXLEN * 2)
    assert redis_client.xlen(events_key(job_id)) < STREAM_MAXLEN * 1.5  # MAXLEN ~ trims
    ttl = redis_client.ttl(events_key(job_id))
    assert 0 < ttl <= client.app_settings.job_ttl_seconds


def test_auth_and_ownership_like_get_job(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["key-a", "key-b"])
    job_id = submit(client, headers={"Authorization": "Bearer key-a"}).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 401
    other = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": "Bearer key-b"})
    assert other.status_code == 404 and other.json()["code"] == "not_found"
    missing = client.get("/v1/jobs/j_" + "a" * 22 + "/events", headers={"Authorization": "Bearer key-a"})
    assert missing.status_code == 404


def test_start_from() -> None:
    snap = Snapshot(raw=b"{}", first_id="100-0", last_id="200-3")
    assert start_from(snap, None) == (True, "200-3")
    assert start_from(snap, "150-2") == (False, "150-2")
    assert start_from(snap, "99-9") == (True, "200-3")  # entries after it may have been trimmed
    assert start_from(snap, "200-4") == (True, "200-3")  # from the future: not ours
    assert start_from(Snapshot(raw=b"{}", first_id=None, last_id=None), "5-0") == (True, "0-0")
