"""The outbox sweep: a job that must have a broker message but has none gets one again within seconds.

A job enters the outbox (``diffbir:outbox``, job id -> when it was last published) in the same transaction
that creates it (``JobStore.create`` / ``AsyncJobStore.create``), or when a worker hands it back
(``worker.recovery``); it leaves when a worker claims it or it ends. So whatever the crash point, an entry
that is older than ``worker_outbox_grace_s`` and whose job id is in none of the queue's lists lost its
message: the API died (or Redis failed) between storing the job and publishing it, or a worker died between
kombu popping the message and recording it as unacked, or a hand-back was cut short. The sweep publishes
those again at the front of the queue (their turn had come or gone) and stamps the entry, so the next look
is ``worker_outbox_grace_s`` later.

One live worker sweeps at a time (a short Redis lock). A message in flight at the moment of the look (just
popped, about to be claimed) may be published twice: harmless, because ``JobStore.claim`` lets one attempt
run a job at a time and finished jobs are skipped. Reading the queue is one LRANGE per priority list, and only
when some entry is overdue; the queue is bounded by ``max_queue_depth``.
"""

from __future__ import annotations

import logging
import time

import redis

from common.job_store import JobStore
from common.jobs import JobStatus
from common.keys import OUTBOX_KEY, OUTBOX_SWEEP_LOCK_KEY, owner_key
from common.queue import queue_lists
from common.workers import WorkerRegistry
from worker.batching import job_id_of
from worker.recovery import Publish

log = logging.getLogger(__name__)

_BATCH = 500  # overdue entries looked at per sweep


class OutboxSweeper:
    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        queue_name: str,
        worker_id: str,
        publish: Publish,
        grace_s: float,
    ) -> None:
        self.redis = client
        self.store = store
        self.queue_name = queue_name
        self.worker_id = worker_id
        self.publish = publish
        self.grace_s = grace_s
        self.workers = WorkerRegistry(client)

    def sweep(self, now: float | None = None) -> int:
        """Republish the overdue outbox entries that have no message; returns how many were published."""
        now = time.time() if now is None else now
        lock_ms = max(1, int(self.grace_s * 500))
        if not self.redis.set(OUTBOX_SWEEP_LOCK_KEY, self.worker_id, nx=True, px=lock_ms):
            return 0  # another worker swept moments ago
        entries = self.redis.zrangebyscore(OUTBOX_KEY, "-inf", now - self.grace_s, 0, _BATCH)
        overdue = [raw.decode() for raw in entries]
        if not overdue:
            return 0
        queued = self._ids_in_queue()  # read BEFORE the records: a message seen here is surely live
        published = 0
        for job_id in overdue:
            if job_id in queued:
                self.redis.zadd(OUTBOX_KEY, {job_id: now}, xx=True)  # waiting its turn: look again later
                continue
            if not self._needs_message(job_id):
                self.redis.zrem(OUTBOX_KEY, job_id)
                continue
            self.publish(job_id)
            self.redis.zadd(OUTBOX_KEY, {job_id: now}, xx=True)
            published += 1
            log.warning("job %s had no broker message; published it again at the front", job_id)
        return published

    def _ids_in_queue(self) -> set[str]:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in queue_lists(self.queue_name):
                pipe.lrange(name, 0, -1)
            lists = pipe.execute()
        return {job_id for messages in lists for raw in messages if (job_id := job_id_of(raw)) is not None}

    def _needs_message(self, job_id: str) -> bool:
        """Queued, or running with no live owner (a hand-back whose publish never happened)."""
        job = self.store.get(job_id)
        if job is None or job.status.terminal:
            return False
        if job.status is JobStatus.queued:
            return True
        raw = self.redis.get(owner_key(job_id))
        owner = raw.decode() if isinstance(raw, bytes) else raw
        return not owner or not self.workers.has_lease(owner)
