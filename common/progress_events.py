"""A job's changes as a Redis stream (``events:{id}``), the source of ``GET /v1/jobs/{id}/events``.

Written by ``JobStore`` inside the same MULTI as the change itself (every status transition and progress
write, worker or API), so the stream never disagrees with the document. Each entry carries the public job
document as it became; entry ids are the SSE event ids, so ``Last-Event-ID`` resumes exactly. Streams are
capped (``MAXLEN ~``), cut to their final entry when the job ends, and expire with their job.

Readers block in ``XREAD BLOCK`` on a connection of their own (no polling loop per client); a reader that
resumes from an id the cap has already trimmed gets a fresh snapshot of the document instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from common.jobs import Job, JobStatus
from common.keys import events_key, job_key

# Entries kept per job: a 100-step job at the default progress interval writes a few dozen.
STREAM_MAXLEN = 200
STATUS_EVENT, PROGRESS_EVENT = "status", "progress"
_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_TERMINAL = frozenset(s.value for s in JobStatus if s.terminal)


def queue_event(pipe: Any, job: Job, status_changed: bool, ttl_s: int) -> None:
    """Queue the entry for this change of ``job`` on a (sync or async) pipeline, inside its MULTI."""
    key = events_key(job.id)
    fields = {
        "event": STATUS_EVENT if status_changed else PROGRESS_EVENT,
        "status": job.status.value,
        "data": job.model_dump_json(exclude={"owner"}),
    }
    pipe.xadd(key, fields, maxlen=STREAM_MAXLEN, approximate=True)
    if job.status.terminal:
        # An ended job's stream keeps only its last entry (the final document) for the rest of the job's
        # TTL: a reader still behind gets that entry, which holds everything, and a finished job costs one
        # more document of memory rather than up to STREAM_MAXLEN of them for days.
        pipe.xtrim(key, maxlen=1, approximate=False)
    pipe.expire(key, ttl_s)


def parse_stream_id(value: str | None) -> tuple[int, int] | None:
    """A stream id as a comparable pair, or None for anything else (a bad Last-Event-ID is ignored)."""
    if value is None or not _STREAM_ID.fullmatch(value.strip()):
        return None
    ms, seq = value.strip().split("-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class JobEvent:
    id: str  # the stream entry id (SSE id)
    event: str  # "status" | "progress"
    status: str
    data: str  # the public job document as JSON

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL


@dataclass(frozen=True)
class Snapshot:
    """The job document and the stream's first and last ids, read in one MULTI (consistent)."""

    raw: bytes | None
    first_id: str | None
    last_id: str | None


class JobEventReader:
    """The API's side: an atomic snapshot, then blocking reads of what follows it."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def snapshot(self, job_id: str) -> Snapshot:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.get(job_key(job_id))
            tx.xrange(events_key(job_id), count=1)
            tx.xrevrange(events_key(job_id), count=1)
            raw, first, last = await tx.execute()
        return Snapshot(raw=raw, first_id=_entry_id(first), last_id=_entry_id(last))

    async def read(self, job_id: str, after_id: str, block_ms: int) -> list[JobEvent]:
        """Entries after ``after_id``, waiting up to ``block_ms`` for the first; [] when none came."""
        answer = await self.redis.xread({events_key(job_id): after_id}, count=100, block=block_ms)
        events: list[JobEvent] = []
        for _key, entries in answer or []:
            for entry_id, fields in entries:
                events.append(
                    JobEvent(
                        id=_text(entry_id),
                        event=_text(fields[b"event"]),
                        status=_text(fields[b"status"]),
                        data=_text(fields[b"data"]),
                    )
                )
        return events

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(job_key(job_id)))


def document_status(public_document: bytes) -> str:
    return str(json.loads(public_document)["status"])


def _entry_id(entries: list[tuple[bytes, Any]]) -> str | None:
    return _text(entries[0][0]) if entries else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
