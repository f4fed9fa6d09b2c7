"""``GET /v1/jobs/{id}/events``: a job's status and progress as Server-Sent Events (sse-starlette).

Each connection first gets the job as it is now (event ``status``), then every change as it happens, read
from the job's Redis stream (``common.progress_events``) with ``XREAD BLOCK`` on a connection of its own: no
polling loop per client. Event ids are stream ids, so a client reconnecting with ``Last-Event-ID`` misses
nothing (or, when the stream's cap has dropped what it missed, gets a fresh ``status`` snapshot first). The
stream ends after the event with a terminal status; keep-alive comments flow while the job waits.
Authentication and ownership are those of ``GET /v1/jobs/{id}`` (another key's job is 404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from common.errors import NotFoundError, ServerBusyError
from common.jobs import JobStatus, is_valid_job_id, public_document
from common.progress_events import (
    STATUS_EVENT,
    JobEventReader,
    Snapshot,
    document_status,
    parse_stream_id,
)
from common.settings import Settings
from service import openapi_docs as docs
from service.auth import caller_of

# XREAD blocks this long before checking that the job still exists (it may expire while a client waits).
BLOCK_MS = 15_000
router = APIRouter(prefix="/v1", tags=["jobs"])


class EventStreams:
    """The API process's event streams: their Redis client and how many may be open at once.

    The client is separate from the API's main one: each open stream holds one of its connections in
    ``XREAD BLOCK``, and its socket timeout must outlast the block (the main client fails fast at 2 s).
    """

    def __init__(self, settings: Settings):
        self.limit = settings.max_event_streams
        self.ping_s = settings.event_stream_ping_s
        self.redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=BLOCK_MS / 1000 + 10,
            socket_connect_timeout=settings.redis_socket_timeout_s,
            max_connections=self.limit + 8,
        )
        self.reader = JobEventReader(self.redis)
        self.open = 0

    async def aclose(self) -> None:
        await self.redis.aclose()


def start_from(snapshot: Snapshot, last_event_id: str | None) -> tuple[bool, str]:
    """Whether to send the snapshot first, and the stream id to read after.

    A resume (``Last-Event-ID``) inside what the stream still holds reads on from there; anything else (no
    id, a junk id, an id older than the oldest entry kept or newer than the newest) starts from a snapshot.
    """
    latest = snapshot.last_id or "0-0"
    resume = parse_stream_id(last_event_id)
    if resume is None or snapshot.first_id is None:
        return True, latest
    first, last = parse_stream_id(snapshot.first_id), parse_stream_id(latest)
    assert first is not None and last is not None
    # At or after the first kept entry, everything after the resume point is still kept; before it, entries
    # may have been trimmed (a snapshot then carries the current state instead).
    if resume < first or resume > last:
        return True, latest
    return False, f"{resume[0]}-{resume[1]}"


async def job_events(
    streams: EventStreams, job_id: str, send_snapshot: bool, after: str, document: bytes
) -> AsyncIterator[ServerSentEvent]:
    if send_snapshot:
        yield ServerSentEvent(data=document.decode(), event=STATUS_EVENT, id=after)
        if JobStatus(document_status(document)).terminal:
            return
    while True:
        events = await streams.reader.read(job_id, after, BLOCK_MS)
        if not events:
            if not await streams.reader.exists(job_id):  # expired while we waited: nothing more will come
                return
            continue
        for event in events:
            after = event.id
            yield ServerSentEvent(data=event.data, event=event.event, id=event.id)
            if event.terminal:
                return


@router.get("/jobs/{job_id}/events", summary="Live status and progress (Server-Sent Events)", **docs.EVENTS)
async def get_job_events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> EventSourceResponse:
    streams: EventStreams = request.app.state.services.events
    owner = caller_of(request)
    if not is_valid_job_id(job_id):
        raise NotFoundError(f"no job {job_id!r}")
    if streams.open >= streams.limit:
        raise ServerBusyError(f"{streams.limit} event streams are open on this process", retry_after_s=5)
    snapshot = await streams.reader.snapshot(job_id)
    document = None if snapshot.raw is None else public_document(snapshot.raw, owner)
    if document is None:
        raise NotFoundError(f"no job {job_id!r}")
    send_snapshot, after = start_from(snapshot, last_event_id)

    async def counted() -> AsyncIterator[ServerSentEvent]:
        streams.open += 1
        try:  # a client that goes away cancels this generator: the finally still runs
            async for event in job_events(streams, job_id, send_snapshot, after, document):
                yield event
        finally:
            streams.open -= 1

    # X-Accel-Buffering: proxies such as nginx would otherwise hold the events back in their buffers.
    return EventSourceResponse(
        counted(), ping=streams.ping_s, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
