"""Every Redis key name the service writes, in one place (prefix ``diffbir:``).

Per job (each expires): ``job:{id}`` (the JSON document), ``cancel:{id}`` (cancel flag of a running job),
``blob:{key}`` (input/result bytes on the Redis blob store), ``owner:{id}`` (the worker holding it).
Per client: ``idem:{owner}:{hash}`` (Idempotency-Key -> job id). Per worker (pruned by heartbeats and
reaping): ``workers`` (zset worker id -> last heartbeat), ``holders`` and ``held:{worker}`` (jobs a worker
holds), ``lease:{worker}`` (expires unless its worker renews it: how a dead worker is noticed),
``reaping:{worker}`` (one reaper of a dead worker at a time), ``batch:parked_workers`` and
``batch:parked:{worker}`` (batch mates' broker messages). ``outbox`` (zset job id -> last publish time; the
job outbox, not the webhook one) holds the jobs that must have a broker message (queued ones, handed-back
ones) until a worker claims them; ``outbox:sweeping`` elects the one worker that republishes the orphans
among them. The broker's own lists belong to kombu (common.queue).

Per job, for live progress: ``events:{id}`` (a stream of its changes, capped and expiring with the job).
Per owner (``common.job_index``, ``common.quotas``): ``jobs:{owner}`` (zset job id -> creation time, the
list route; pruned lazily and by age, and expiring when unused), ``active:{owner}`` (zset of its queued and
running jobs -> slot expiry), ``submits:{owner}`` (zset, the sliding window of its recent submissions).
Webhooks (``common.webhook_outbox``): ``webhooks:due`` (zset delivery id -> when due or when its lease ends)
and ``webhook:{id}`` (the delivery record). Nothing grows without bound: every per-job or per-owner key
expires, and the outbox entries are removed once delivered or given up.
"""

from __future__ import annotations

import hashlib

KEY_PREFIX = "diffbir:"

WORKERS_KEY = f"{KEY_PREFIX}workers"
HOLDERS_KEY = f"{KEY_PREFIX}holders"
PARKED_WORKERS_KEY = f"{KEY_PREFIX}batch:parked_workers"
OUTBOX_KEY = f"{KEY_PREFIX}outbox"
OUTBOX_SWEEP_LOCK_KEY = f"{KEY_PREFIX}outbox:sweeping"
# hash weights version -> the capability document its workers publish at start (common.capabilities)
CAPABILITIES_KEY = f"{KEY_PREFIX}capabilities"
WEBHOOKS_DUE_KEY = f"{KEY_PREFIX}webhooks:due"

OWNER_PREFIX = f"{KEY_PREFIX}owner:"
HELD_PREFIX = f"{KEY_PREFIX}held:"
REAP_LOCK_PREFIX = f"{KEY_PREFIX}reaping:"
PARKED_PREFIX = f"{KEY_PREFIX}batch:parked:"
LEASE_PREFIX = f"{KEY_PREFIX}lease:"


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}cancel:{job_id}"


def blob_key(key: str) -> str:
    return f"{KEY_PREFIX}blob:{key}"


def idempotency_key(owner: str, key: str) -> str:
    # The client's key is hashed so arbitrary header bytes never become part of a Redis key name.
    return f"{KEY_PREFIX}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def owner_key(job_id: str) -> str:
    return OWNER_PREFIX + job_id


def held_key(worker_id: str) -> str:
    return HELD_PREFIX + worker_id


def reap_lock_key(worker_id: str) -> str:
    return REAP_LOCK_PREFIX + worker_id


def parked_key(worker_id: str) -> str:
    return PARKED_PREFIX + worker_id


def lease_key(worker_id: str) -> str:
    return LEASE_PREFIX + worker_id


def events_key(job_id: str) -> str:
    return f"{KEY_PREFIX}events:{job_id}"


def owner_jobs_key(owner: str) -> str:
    return f"{KEY_PREFIX}jobs:{owner}"


def active_jobs_key(owner: str) -> str:
    return f"{KEY_PREFIX}active:{owner}"


def submits_key(owner: str) -> str:
    return f"{KEY_PREFIX}submits:{owner}"


def webhook_delivery_key(delivery_id: str) -> str:
    return f"{KEY_PREFIX}webhook:{delivery_id}"
