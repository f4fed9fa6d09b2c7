"""The client's retries (tenacity, Retry-After, automatic Idempotency-Key), SSE wait with resume and polling
fallback, URL submit and job listing, against a scripted API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from client import APIError, AsyncRestoreClient, RestoreClient
from client.retries import RetryPolicy
from tests.client.conftest import JOB_ID, FakeClock, ScriptedAPI, job_doc, json_response, problem

BASE = "http://api.test"
JOB_PATH = f"/v1/jobs/{JOB_ID}"
EVENTS_PATH = f"{JOB_PATH}/events"


def make_client(api: ScriptedAPI, clock: FakeClock, **kwargs: object) -> RestoreClient:
    return RestoreClient(
        BASE, "k", transport=api.transport(), sleep=clock.sleep, clock=clock.monotonic, **kwargs
    )


def sse(*events: tuple[str, str, dict], fail_after: bool = False) -> httpx.Response:
    """An event-stream answer; with ``fail_after`` the connection breaks after the last event."""

    text = b"".join(
        f"id: {i}\nevent: {kind}\ndata: {json.dumps(doc)}\n\n".encode() for i, kind, doc in events
    )
    text += b": ping\n\n"

    def breaking() -> Iterator[bytes]:
        yield text
        raise httpx.ReadError("connection reset")

    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=breaking() if fail_after else text
    )


# ------------------------------------------------------------------------------------------------ retries


def test_submit_retries_503_and_429_honouring_retry_after_with_one_idempotency_key(
    api: ScriptedAPI, clock: FakeClock
) -> None:
    api.on(
        "POST",
        "/v1/restore",
        [
            httpx.ConnectError("refused"),
            problem(503, "busy", "uploads in progress", **{"Retry-After": "2"}),
            problem(429, "rate_limited", "slow down", **{"Retry-After": "7"}),
            json_response(202, job_doc()),
        ],
    )
    with make_client(api, clock) as client:
        job = client.submit(b"png bytes", steps=10)
    assert job.id == JOB_ID
    assert 0.5 <= clock.delays[0] <= 1.0  # no Retry-After: exponential backoff with jitter
    assert clock.delays[1:] == [2.0, 7.0]
    keys = {request.headers["Idempotency-Key"] for request in api.requests}
    assert len(api.requests) == 4 and len(keys) == 1 and keys.pop().startswith("rc-")


def test_explicit_idempotency_key_is_kept_and_client_errors_are_not_retried(
    api: ScriptedAPI, clock: FakeClock
) -> None:
    api.on("POST", "/v1/restore", [problem(422, "invalid_image", "truncated")])
    with make_client(api, clock) as client, pytest.raises(APIError) as info:
        client.submit(b"png", idempotency_key="mine")
    assert info.value.status == 422 and len(api.requests) == 1 and clock.delays == []
    assert api.requests[0].headers["Idempotency-Key"] == "mine"


def test_retries_stop_after_the_attempts_and_on_a_too_long_retry_after(
    api: ScriptedAPI, clock: FakeClock
) -> None:
    api.on("GET", f"{JOB_PATH}/result", [problem(503, "unavailable", "redis down")])
    with make_client(api, clock, retries=RetryPolicy(attempts=3)) as client, pytest.raises(APIError):
        client.result(JOB_ID)
    assert len(api.requests) == 3 and len(clock.delays) == 2
    api.requests.clear()
    api.on("DELETE", JOB_PATH, [problem(429, "queue_full", "later", **{"Retry-After": "3600"})])
    with make_client(api, clock) as client, pytest.raises(APIError) as info:
        client.cancel(JOB_ID)
    assert info.value.retry_after == 3600 and len(api.requests) == 1  # not worth waiting an hour for


# ---------------------------------------------------------------------------------------- submit by URL, list


def test_url_submit_sends_json(api: ScriptedAPI, clock: FakeClock) -> None:
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    with make_client(api, clock) as client:
        client.submit(
            "https://images.example.com/a.png", upscale=2, seed=None, webhook_events_filter=["start"]
        )
    request = api.requests[0]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "image": "https://images.example.com/a.png",
        "upscale": 2,
        "webhook_events_filter": ["start"],
    }


def test_list_and_iterate_jobs(api: ScriptedAPI, clock: FakeClock) -> None:
    first = {
        "jobs": [job_doc("succeeded", id="j_" + "b" * 22)],
        "next_cursor": "c1",
        "next": "/v1/jobs?cursor=c1",
    }
    last = {"jobs": [job_doc("failed", id="j_" + "c" * 22)], "next_cursor": None, "next": None}
    api.on("GET", "/v1/jobs", [json_response(200, first), json_response(200, last)])
    with make_client(api, clock) as client:
        jobs = list(client.iter_jobs(status="succeeded", page_size=1))
    assert [job.id for job in jobs] == ["j_" + "b" * 22, "j_" + "c" * 22]
    assert [dict(r.url.params) for r in api.requests] == [
        {"status": "succeeded", "limit": "1"},
        {"status": "succeeded", "limit": "1", "cursor": "c1"},
    ]


# ------------------------------------------------------------------------------------------------ SSE wait


def test_wait_follows_events_without_polling(api: ScriptedAPI, clock: FakeClock) -> None:
    api.on(
        "GET",
        EVENTS_PATH,
        [
            sse(
                ("1-0", "status", job_doc("running", "starting", 0, 4)),
                ("1-1", "progress", job_doc("running", "sampler", 2, 4)),
                ("1-2", "status", job_doc("succeeded", "done", 4, 4)),
            )
        ],
    )
    seen = []
    with make_client(api, clock) as client:
        job = client.wait(JOB_ID, on_progress=seen.append)
    assert job.succeeded and [j.progress.step for j in seen] == [0, 2, 4]
    assert [r.url.path for r in api.requests] == [EVENTS_PATH]  # no GET /v1/jobs/{id}


def test_wait_resumes_a_broken_stream_with_last_event_id(api: ScriptedAPI, clock: FakeClock) -> None:
    api.on(
        "GET",
        EVENTS_PATH,
        [
            sse(("5-0", "status", job_doc("running", "sampler", 1, 4)), fail_after=True),
            sse(("5-1", "status", job_doc("succeeded", "done", 4, 4))),
        ],
    )
    with make_client(api, clock) as client:
        assert client.wait(JOB_ID).succeeded
    assert "last-event-id" not in api.requests[0].headers
    assert api.requests[1].headers["Last-Event-ID"] == "5-0"


def test_wait_falls_back_to_polling_without_the_events_route(api: ScriptedAPI, clock: FakeClock) -> None:
    api.on(
        "GET", JOB_PATH, [json_response(200, job_doc("running")), json_response(200, job_doc("succeeded"))]
    )
    with make_client(api, clock) as client:
        assert client.wait(JOB_ID).succeeded  # the scripted API answers 404 on .../events
    assert [r.url.path for r in api.requests] == [EVENTS_PATH, JOB_PATH, JOB_PATH]


def test_async_client_waits_on_events_and_lists(api: ScriptedAPI) -> None:
    api.on("GET", EVENTS_PATH, [sse(("1-0", "status", job_doc("succeeded", "done", 2, 2)))])
    api.on("GET", "/v1/jobs", [json_response(200, {"jobs": [job_doc()], "next_cursor": None, "next": None})])

    async def run() -> tuple[str, list[str]]:
        async with AsyncRestoreClient(BASE, transport=api.transport()) as client:
            job = await client.wait(JOB_ID)
            ids = [j.id async for j in client.iter_jobs()]
        return job.status, ids

    assert asyncio.run(run()) == ("succeeded", [JOB_ID])
