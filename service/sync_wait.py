"""Synchronous submissions: ``Prefer: wait=N`` (RFC 7240) holds the answer until the job finishes or N s pass.

The wait reads the job's event stream (``common.progress_events``, written in the same MULTI as every
change of the job) with ``XREAD BLOCK`` on the event streams' Redis client, as ``GET /v1/jobs/{id}/events``
does: no polling of the job per request. It starts from an atomic snapshot (document and last stream id),
so a job that finishes in between is not missed. Held requests count against the same bound as open event
streams (``max_event_streams``); past it a submission answers 202 at once, without ``Preference-Applied``.
"""

from __future__ import annotations

import asyncio
import re

from common.jobs import JobStatus
from common.progress_events import document_status
from service.events import BLOCK_MS, EventStreams

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,9})\"?\s*(?:$|[,;])", re.IGNORECASE)


def requested_wait(prefer: str | None, max_wait_s: int) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (capped at ``max_wait_s``), or None when not asked.
    Unrecognised or malformed preferences are ignored, as RFC 7240 requires."""
    if not prefer:
        return None
    match = _WAIT.search(prefer)
    if match is None:
        return None
    return min(int(match.group(1)), max_wait_s)


def can_wait(streams: EventStreams) -> bool:
    return streams.open < streams.limit


async def wait_finished(streams: EventStreams, job_id: str, timeout_s: float) -> bytes | None:
    """The job's public document once it finished, or the latest one after ``timeout_s`` (None: the job is
    gone). The caller has checked ownership (it just created or replayed the job)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    streams.open += 1
    try:
        snapshot = await streams.reader.snapshot(job_id)
        if snapshot.raw is None:
            return None
        latest = snapshot.raw
        after = snapshot.last_id or "0-0"
        while not JobStatus(document_status(latest)).terminal:
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                break
            for event in await streams.reader.read(job_id, after, min(remaining_ms, BLOCK_MS)):
                after, latest = event.id, event.data.encode()
        return latest
    finally:
        streams.open -= 1
