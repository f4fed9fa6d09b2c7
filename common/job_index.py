"""Each owner's jobs, newest first, for ``GET /v1/jobs``: a zset per owner (job id -> creation time in µs).

Entries expire with their jobs without a sweeper: a page reads the documents of its entries in one MGET and
removes the entries whose document has expired (lazy pruning); entries older than any job can live
(``2 * job_ttl``: at most a TTL queued or running, then a TTL after it finished) are dropped when a first page
is read, and the whole key expires ``2 * job_ttl`` after the owner's last submission.

Cursors are opaque (url-safe base64 of the last entry's score and id) and stable under inserts: new jobs
sort before the cursor, so paging never repeats or skips an entry. A page scans at most ``MAX_SCAN``
entries, so a ``status`` filter that matches little costs bounded work: the page may then hold fewer jobs
than asked (even none) while ``next_cursor`` says where to go on.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from common.jobs import Job, JobStatus, public_document
from common.keys import job_key, owner_jobs_key

MAX_PAGE = 100
MAX_SCAN = 1000
_BATCH = 100


class BadCursorError(ValueError):
    """The cursor was not made by this service."""


@dataclass(frozen=True)
class Cursor:
    score: int  # creation time, µs since the epoch
    job_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.score}:{self.job_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            score, _, job_id = text.partition(":")
            if not job_id or not score.isdigit():
                raise ValueError(text)
            return cls(int(score), job_id)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise BadCursorError("the cursor is not one this API returned") from exc


@dataclass(frozen=True)
class Page:
    documents: list[bytes]  # public job documents (JSON), newest first
    next_cursor: str | None


def score_of(job: Job) -> int:
    return int(job.created_at.timestamp() * 1_000_000)


class JobIndex:
    def __init__(self, client: aioredis.Redis, ttl_s: int):
        self.redis = client
        self.lifetime_s = 2 * ttl_s  # the longest a job can exist (see the module docstring)

    def queue_add(self, tx: Any, job: Job) -> None:
        """Queue the job's entry on a pipeline, e.g. the submission's MULTI (two commands: the submit path is
        hot; pruning by age happens when a page is read)."""
        key = owner_jobs_key(job.owner)
        tx.zadd(key, {job.id: score_of(job)})
        tx.expire(key, self.lifetime_s)

    async def add(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            self.queue_add(tx, job)
            await tx.execute()

    async def page(
        self, owner: str, limit: int, cursor: str | None = None, status: JobStatus | None = None
    ) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        key = owner_jobs_key(owner)
        after = Cursor.decode(cursor) if cursor else None
        if after is None:  # a first page: drop entries older than any job can live
            oldest = int((time.time() - self.lifetime_s) * 1_000_000)
            await self.redis.zremrangebyscore(key, "-inf", f"({oldest}")
        found: list[bytes] = []
        last: Cursor | None = None
        scanned = 0
        while scanned < MAX_SCAN:
            entries = await self._entries_after(key, after, _BATCH)
            if not entries:
                return Page(found, None)
            raws = await self.redis.mget([job_key(job_id) for job_id, _ in entries])
            expired = []
            for (job_id, score), raw in zip(entries, raws, strict=True):
                scanned += 1
                last = after = Cursor(score, job_id)
                document = None if raw is None else public_document(raw, owner)
                if document is None:
                    expired.append(job_id)
                elif status is None or json.loads(document)["status"] == status.value:
                    found.append(document)
                    if len(found) == limit:
                        break
            if expired:
                await self.redis.zrem(key, *expired)
            if len(found) == limit:
                more = await self._entries_after(key, last, 1)
                return Page(found, last.encode() if more and last else None)
            if len(entries) < _BATCH:
                return Page(found, None)
        return Page(found, last.encode() if last else None)

    async def _entries_after(self, key: str, after: Cursor | None, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` entries strictly after ``after`` in (score desc, id desc) order."""
        if after is None:
            rows = await self.redis.zrange(
                key, "+inf", "-inf", desc=True, byscore=True, offset=0, num=count, withscores=True
            )
            return [(_text(m), int(s)) for m, s in rows]
        # Equal scores (same microsecond) come in descending id order: skip those at or before the cursor.
        rows = await self.redis.zrange(
            key, after.score, "-inf", desc=True, byscore=True, offset=0, num=count + _BATCH, withscores=True
        )
        entries = [(_text(m), int(s)) for m, s in rows]
        entries = [(m, s) for m, s in entries if s < after.score or m < after.job_id]
        return entries[:count]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
