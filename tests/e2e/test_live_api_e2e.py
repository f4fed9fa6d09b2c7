"""List, live progress (SSE), Standard Webhooks with durable delivery, and per-key quotas, on the real
processes: an API process (uvicorn) and a worker process (tiny model, CPU) on their own Redis.

Run on the Redis storage backend only: these features live in the record path, which both backends share.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from httpx_sse import connect_sse
from standardwebhooks import Webhook

from common.queue import queue_depth
from tests.conftest import free_port
from tests.e2e.conftest import API_KEYS, WEBHOOK_SECRET, ManagedProcess, Stack, wait_until
from tests.worker.conftest import Receiver, png_bytes

pytestmark = pytest.mark.parametrize("stack", ["redis"], indirect=True)

IMAGE = png_bytes(32, 32, (200, 100, 50))
BOB = API_KEYS[1]
CAROL, DAVE = "key-carol", "key-dave"


def events_of(stack: Stack, job_id: str, stop_after: int = 0, **headers: str) -> list[tuple[str, str, dict]]:
    """(id, event, document) of the events of one SSE connection: all of them (it must end by itself), or the
    first ``stop_after`` when given (the client then drops the connection)."""
    out = []
    path = f"/v1/jobs/{job_id}/events"
    with (
        httpx.Client(base_url=stack.http.base_url, timeout=60) as http,
        connect_sse(http, "GET", path, headers=stack.headers(**headers)) as source,
    ):
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            out.append((sse.id, sse.event, json.loads(sse.data)))
            if len(out) == stop_after:
                break
    return out


def stream_id(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def test_sse_streams_progress_live_and_resumes(live_stack: Stack) -> None:
    job_id = live_stack.submit_ok(IMAGE, steps=40)
    first = events_of(live_stack, job_id, stop_after=3)  # then the connection drops mid-run
    assert first[0][2]["status"] in ("queued", "running")
    rest = events_of(live_stack, job_id, **{"Last-Event-ID": first[-1][0]})
    events = first + rest
    ids = [stream_id(event_id) for event_id, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # resumed after the last one seen, no repeats
    assert events[-1][2]["status"] == "succeeded" and all(
        doc["status"] != "succeeded" for *_, doc in events[:-1]
    )
    progress = [doc["progress"] for _, kind, doc in events if kind == "progress"]
    sampler = [p["step"] for p in progress if p["stage"] == "sampler"]
    assert len(progress) >= 3 and sampler and sampler == sorted(sampler), events  # as they happen
    # Once finished: its final state, once.
    assert [doc["status"] for *_, doc in events_of(live_stack, job_id)] == ["succeeded"]
    other = live_stack.http.get(f"/v1/jobs/{job_id}/events", headers=live_stack.headers(BOB))
    assert other.status_code == 404


def test_list_jobs_pages_and_filters(live_stack: Stack) -> None:
    first = live_stack.submit_ok(IMAGE, key=BOB)
    second = live_stack.submit_ok(IMAGE, key=BOB)
    cancel = live_stack.http.post(f"/v1/jobs/{second}/cancel", headers=live_stack.headers(BOB))
    assert cancel.status_code in (200, 202)
    for job_id in (first, second):
        wait_until(lambda j=job_id: live_stack.job(j, BOB)["status"] in ("succeeded", "canceled"), 60)
    page = live_stack.http.get("/v1/jobs?limit=1", headers=live_stack.headers(BOB)).json()
    assert [j["id"] for j in page["jobs"]] == [second]
    page = live_stack.http.get(page["next"], headers=live_stack.headers(BOB)).json()
    assert [j["id"] for j in page["jobs"]] == [first]
    done = live_stack.http.get("/v1/jobs?status=succeeded", headers=live_stack.headers(BOB)).json()
    assert first in [j["id"] for j in done["jobs"]] and second not in [j["id"] for j in done["jobs"]]
    alice = live_stack.http.get("/v1/jobs?limit=100", headers=live_stack.headers()).json()
    assert not {first, second} & {j["id"] for j in alice["jobs"]}


def test_webhooks_start_completed_and_cancel_while_queued(live_stack: Stack) -> None:
    receiver = Receiver()
    try:
        job_id = live_stack.submit_ok(
            IMAGE, callback_url=receiver.url, webhook_events_filter="start,completed"
        )
        assert live_stack.wait_status(job_id)["status"] == "succeeded"
        wait_until(lambda: len(receiver.requests) >= 2, 20, what="start and completed webhooks")
        payloads = [Webhook(WEBHOOK_SECRET).verify(body, headers) for headers, body in receiver.requests]
        assert sorted(p["type"] for p in payloads) == ["job.completed", "job.start"]
        receiver.requests.clear()

        live_stack.worker.signal(signal.SIGSTOP)  # keep the next job queued
        try:
            queued = live_stack.submit_ok(IMAGE, callback_url=receiver.url)
            resp = live_stack.http.post(f"/v1/jobs/{queued}/cancel", headers=live_stack.headers())
            assert resp.json()["status"] == "canceled"
        finally:
            live_stack.worker.signal(signal.SIGCONT)
        wait_until(lambda: receiver.requests, 20, what="completed webhook of the canceled job")
        headers, body = receiver.requests[0]
        payload = Webhook(WEBHOOK_SECRET).verify(body, headers)
        assert payload["type"] == "job.completed" and payload["data"]["status"] == "canceled"
        assert payload["data"]["id"] == queued and len(receiver.requests) == 1
    finally:
        receiver.close()
    wait_until(lambda: queue_depth(live_stack.redis, "gpu") == 0, 30, what="queue drained")


class StallingReceiver:
    """Holds its first request unanswered (the sender is killed meanwhile); answers later ones 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.requests.append((dict(self.headers.items()), body))
                if len(owner.requests) == 1:
                    owner.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # restarts the worker (model load) and waits out a lease
def test_webhook_in_flight_when_its_sender_dies_is_sent_by_another(live_stack: Stack) -> None:
    receiver = StallingReceiver()
    try:
        job_id = live_stack.submit_ok(IMAGE, callback_url=receiver.url)
        assert live_stack.wait_status(job_id)["status"] == "succeeded"
        wait_until(lambda: receiver.requests, 20, what="first delivery attempt")
        live_stack.worker.signal(signal.SIGKILL)  # the sender dies with the POST in flight
        live_stack.worker.proc.wait(timeout=10)  # type: ignore[union-attr]
        live_stack.start_worker()  # another process; it takes the message over once the lease ends
        wait_until(lambda: len(receiver.requests) >= 2, 30, what="redelivery by the new worker")
        (first_headers, first_body), (headers, body) = receiver.requests[:2]
        assert headers["webhook-id"] == first_headers["webhook-id"]  # receivers can deduplicate
        assert body == first_body
        assert Webhook(WEBHOOK_SECRET).verify(body, headers)["data"]["id"] == job_id
        wait_until(lambda: live_stack.redis.zcard("diffbir:webhooks:due") == 0, 10, what="outbox empty")
    finally:
        receiver.close()


@pytest.fixture
def quota_api(live_stack: Stack) -> Iterator[Stack]:
    """A second API process on the same Redis and worker, with small per-key quotas."""
    port = free_port()
    env = dict(
        live_stack.env,
        DIFFBIR_PORT=str(port),
        DIFFBIR_HOST="127.0.0.1",
        DIFFBIR_MAX_ACTIVE_JOBS_PER_KEY="2",
        DIFFBIR_SUBMIT_RATE_PER_KEY="4",
        DIFFBIR_SUBMIT_RATE_WINDOW_S="60",
        DIFFBIR_MAX_QUEUE_DEPTH="100",
        # Keys of their own: submission logs are per key in Redis, shared with the main API's submissions.
        DIFFBIR_API_KEYS=json.dumps([CAROL, DAVE]),
    )
    api = ManagedProcess("api-quotas", live_stack.api.argv, env, live_stack.api.log_path.parent)
    api.start()
    original = live_stack.http
    live_stack.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def up() -> bool:
        assert api.alive, api.tail()
        try:
            return live_stack.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, 0.1, what="quota API up")
        yield live_stack
    finally:
        live_stack.http.close()
        live_stack.http = original
        api.stop()


def test_per_key_quotas(quota_api: Stack) -> None:
    stack = quota_api
    stack.worker.signal(signal.SIGSTOP)  # jobs stay queued, so they stay active
    accepted: list[str] = []
    try:
        for _ in range(2):
            accepted.append(stack.submit_ok(IMAGE, key=CAROL))
        refused = stack.submit(IMAGE, key=CAROL)
        assert refused.status_code == 429 and refused.json()["code"] == "active_jobs_limit", refused.text
        assert refused.headers["Retry-After"] == "7"
        other = stack.submit(IMAGE, key=DAVE)
        assert other.status_code == 202  # another key has its own quota
        stack.http.post(f"/v1/jobs/{other.json()['id']}/cancel", headers=stack.headers(DAVE))
        stack.http.post(f"/v1/jobs/{accepted[0]}/cancel", headers=stack.headers(CAROL))  # frees a slot
        third = stack.submit(IMAGE, key=CAROL)
        assert third.status_code == 202 and third.headers["RateLimit-Remaining"] == "1"
        accepted.append(third.json()["id"])
        for job_id in accepted[1:]:
            stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=stack.headers(CAROL))
        accepted.append(stack.submit_ok(IMAGE, key=CAROL))  # the 4th and last in the window
        stack.http.post(f"/v1/jobs/{accepted[-1]}/cancel", headers=stack.headers(CAROL))
        limited = stack.submit(IMAGE, key=CAROL)
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited", limited.text
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["RateLimit-Limit"] == "4" and limited.headers["RateLimit-Remaining"] == "0"
        assert limited.headers["RateLimit-Policy"] == "4;w=60"
    finally:
        stack.worker.signal(signal.SIGCONT)
    wait_until(lambda: queue_depth(stack.redis, "gpu") == 0, 30, what="queue drained")


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, remembering each request's method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return super().handle_request(request)


def test_client_follows_events_and_lists(live_stack: Stack) -> None:
    from client import RestoreClient

    transport = RecordingTransport()
    snapshots = []
    base = f"http://127.0.0.1:{live_stack.api_port}"
    with RestoreClient(base, BOB, transport=transport) as client:
        data = client.restore(IMAGE, on_progress=snapshots.append, steps=12, upscale=2, seed=5)
        job_id = snapshots[0].id
        listed = client.list_jobs(limit=5)
        found = [job.id for job in client.iter_jobs(status="succeeded", page_size=2)]
    assert data.startswith(b"\x89PNG")
    sampler = [s.progress.step for s in snapshots if s.progress.stage == "sampler"]
    assert len(sampler) >= 2 and sampler == sorted(sampler) and snapshots[-1].succeeded
    paths = [path for _, path in transport.seen]
    assert f"/v1/jobs/{job_id}/events" in paths
    assert f"/v1/jobs/{job_id}" not in paths  # followed live, never polled
    post = next(i for i, (method, _) in enumerate(transport.seen) if method == "POST")
    assert post == 0 and listed.jobs[0].id == job_id and job_id in found
