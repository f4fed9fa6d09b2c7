"""Following a job through ``GET /v1/jobs/{id}/events`` (Server-Sent Events, read with httpx-sse).

Each event carries the whole job document, so a follower hands every one to the progress callback and stops
at the first terminal one. A dropped connection is resumed with ``Last-Event-ID`` (nothing is missed); a
server without the endpoint, or a stream that keeps breaking, makes the follower answer None and the caller
falls back to polling ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse

from client.errors import WaitTimeoutError
from client.jobs import Job

MAX_RECONNECTS = 5
EVENT_STREAM = "text/event-stream"


def _events_path(job_path: str) -> str:
    return f"{job_path}/events"


def _headers(last_id: str | None) -> dict[str, str]:
    headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    return headers


def _timeout(remaining: float | None, default: httpx.Timeout) -> httpx.Timeout:
    """The read timeout is the time left to wait (keep-alive comments arrive every ~15 s meanwhile)."""
    if remaining is None:
        return default
    return httpx.Timeout(default.connect, read=max(0.01, remaining), write=default.write, pool=default.pool)


def _usable(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith(EVENT_STREAM)


class _Follow:
    """The state of one follow (shared by the sync and async loops): last event id, last job, deadline."""

    def __init__(self, on_job: Callable[[Job], None], remaining: Callable[[], float | None], timeout: float):
        self.on_job, self.remaining, self.timeout = on_job, remaining, timeout
        self.last_id: str | None = None
        self.job: Job | None = None

    def take(self, event_id: str, data: str) -> Job:
        if event_id:
            self.last_id = event_id
        self.job = Job.from_dict(json.loads(data))
        self.on_job(self.job)
        return self.job

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0 and self.job is not None:
            raise WaitTimeoutError(self.job, self.timeout)


def follow(
    http: httpx.Client,
    job_path: str,
    on_job: Callable[[Job], None],
    remaining: Callable[[], float | None],
    timeout: float | None = None,
) -> Job | None:
    """The finished job, followed live; None when events are unavailable (the caller polls instead)."""
    state = _Follow(on_job, remaining, timeout or 0.0)
    default = http.timeout
    for _ in range(MAX_RECONNECTS):
        try:
            with connect_sse(
                http,
                "GET",
                _events_path(job_path),
                headers=_headers(state.last_id),
                timeout=_timeout(remaining(), default),
            ) as source:
                if not _usable(source.response):
                    return None
                for sse in source.iter_sse():
                    if state.take(sse.id, sse.data).done:
                        return state.job
        except (httpx.TransportError, SSEError, ValueError):
            state.check_deadline()
            continue
        return None  # ended without a terminal event (e.g. the job expired): let polling tell
    return None


async def afollow(
    http: httpx.AsyncClient,
    job_path: str,
    on_job: Callable[[Job], None],
    remaining: Callable[[], float | None],
    timeout: float | None = None,
) -> Job | None:
    """``follow`` for the asyncio client."""
    state = _Follow(on_job, remaining, timeout or 0.0)
    default = http.timeout
    for _ in range(MAX_RECONNECTS):
        try:
            async with aconnect_sse(
                http,
                "GET",
                _events_path(job_path),
                headers=_headers(state.last_id),
                timeout=_timeout(remaining(), default),
            ) as source:
                if not _usable(source.response):
                    return None
                async for sse in source.aiter_sse():
                    if state.take(sse.id, sse.data).done:
                        return state.job
        except (httpx.TransportError, SSEError, ValueError):
            state.check_deadline()
            continue
        return None
    return None
