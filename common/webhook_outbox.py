"""Durable webhook delivery: an outbox on Redis with leases, redelivery and attempt fencing.

A job's webhook messages are written by ``JobStore`` in the same MULTI as the status change that causes them
(``queue_for_change``), so a message exists exactly when its event happened, whichever process made the
change (a worker finishing a job, the API canceling a queued one). Senders (threads in every worker,
``worker.notify``) then:

1. ``claim``: one Lua call takes the earliest due message, bumps its ``attempt`` (the fencing token) and
   pushes its due time to the end of a lease (``webhook_lease_s``);
2. POST it (``common.webhooks.deliver``);
3. ``finish``: remove it (delivered, or given up) or schedule the next try, only if ``attempt`` is still
   theirs.

A sender that dies mid-POST never finishes: its lease runs out, the message becomes due again and another
sender claims it (``attempt`` + 1); should the first come back, its ``finish`` is refused. The message id
(``webhook-id``) is fixed per job and event, so a receiver that saw the lost attempt can deduplicate.

Events (Replicate's names): ``start`` (the job started running, once) and ``completed`` (it ended:
succeeded, failed or canceled, also when canceled while still queued). A job chooses them with
``webhook_events_filter`` (default: ``completed`` only).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from common import telemetry
from common.jobs import Job, JobStatus, utcnow
from common.keys import WEBHOOKS_DUE_KEY, webhook_delivery_key
from common.params import WEBHOOK_EVENTS

START, COMPLETED = WEBHOOK_EVENTS
# A message not delivered within a day (receiver down all along) is dropped when its record expires.
RECORD_TTL_S = 24 * 3600

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
local id = due[1]
local key = ARGV[3] .. id
if redis.call('EXISTS', key) == 0 then
  redis.call('ZREM', KEYS[1], id)
  return {id}
end
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
local fields = redis.call('HMGET', key, 'url', 'event', 'job_id', 'body', 'traceparent')
return {id, attempt, fields[1], fields[2], fields[3], fields[4], fields[5]}
"""

# KEYS: due zset, record. ARGV: attempt, next due ms ('' = remove), id. 1 = done, 0 = fenced off.
_FINISH = """
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[2])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
end
return 1
"""


def message_id(job_id: str, event: str) -> str:
    return f"msg_{job_id}_{event}"


def event_of_change(before: JobStatus, job: Job) -> str | None:
    """The webhook event a status change causes, if any (progress and redeliveries cause none)."""
    if job.status.terminal and not before.terminal:
        return COMPLETED
    if before is JobStatus.queued and job.status is JobStatus.running:
        return START
    return None


def payload(event: str, job: Job) -> bytes:
    """The message body (Standard Webhooks' recommended envelope: type, timestamp, data)."""
    envelope = {"type": f"job.{event}", "timestamp": utcnow().isoformat(), "data": job.public_dict()}
    return json.dumps(envelope, separators=(",", ":")).encode()


def queue_for_change(pipe: Any, before: JobStatus, job: Job, now: float | None = None) -> None:
    """Queue the message this change of ``job`` causes (if it asked for one) on a pipeline, in its MULTI."""
    event = event_of_change(before, job)
    url = job.params.callback_url
    if event is None or not url or event not in job.params.webhook_events_filter:
        return
    delivery_id = message_id(job.id, event)
    key = webhook_delivery_key(delivery_id)
    record = {"url": url, "event": event, "job_id": job.id, "body": payload(event, job), "attempt": 0}
    # The sender's span joins the trace of whoever made the change (the worker's job span, or the request that
    # canceled a queued job), else the job's own trace.
    traceparent = telemetry.current_traceparent() or job.traceparent
    if traceparent:
        record["traceparent"] = traceparent
    pipe.hset(key, mapping=record)
    pipe.expire(key, RECORD_TTL_S)
    pipe.zadd(WEBHOOKS_DUE_KEY, {delivery_id: int((time.time() if now is None else now) * 1000)}, nx=True)


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id
    attempt: int  # 1 for the first try; the fencing token of this claim
    url: str
    event: str
    job_id: str
    body: bytes
    traceparent: str | None = None  # the trace the delivery's span joins (common.telemetry)


class Outbox:
    """The senders' side (sync: worker threads)."""

    def __init__(self, client: redis.Redis, lease_s: float):
        self.redis = client
        self.lease_ms = int(lease_s * 1000)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    def claim(self, now: float | None = None) -> Delivery | None:
        """The earliest due message, leased to the caller; None when nothing is due."""
        now_ms = int((time.time() if now is None else now) * 1000)
        while True:
            row = self._claim(keys=[WEBHOOKS_DUE_KEY], args=[now_ms, self.lease_ms, webhook_delivery_key("")])
            if row is None:
                return None
            if len(row) == 1:  # its record expired: dropped, look for the next
                continue
            delivery_id, attempt, url, event, job_id, body, *rest = row
            traceparent = _text(rest[0]) if rest and rest[0] else None
            return Delivery(
                _text(delivery_id), int(attempt), _text(url), _text(event), _text(job_id), body, traceparent
            )

    def done(self, delivery: Delivery) -> bool:
        """Delivered or given up: forget it. False when a newer attempt owns it (this one was too slow)."""
        return self._finish_with(delivery, "")

    def retry_at(self, delivery: Delivery, when: float) -> bool:
        """Due again at ``when`` (unix seconds). False when a newer attempt owns it."""
        return self._finish_with(delivery, str(int(when * 1000)))

    def pending(self) -> int:
        return int(self.redis.zcard(WEBHOOKS_DUE_KEY))

    def _finish_with(self, delivery: Delivery, next_due_ms: str) -> bool:
        key = webhook_delivery_key(delivery.id)
        args = [delivery.attempt, next_due_ms, delivery.id]
        return bool(self._finish(keys=[WEBHOOKS_DUE_KEY, key], args=args))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
