"""Fast recovery of jobs whose worker died, without waiting for the broker's visibility timeout.

The broker alone redelivers a dead worker's unacked message only after ``broker_visibility_timeout_s``
(an hour by default, since it must exceed the hard time limit). To do better, every worker records which jobs
it holds (``diffbir:owner:{job}`` -> worker id, and the set ``diffbir:held:{worker}``). With every heartbeat,
each live worker looks for holders whose heartbeat is older than ``worker_heartbeat_max_age_s`` and publishes
a fresh ``diffbir.restore(job_id)`` for each job they still hold in ``running``.

Duplicates are harmless by construction: a delivery of a job that is ``running`` under a *live* owner is
skipped (``live_owner``), a finished job is skipped anyway, and the original message that the broker
eventually restores finds the job finished. A falsely-declared-dead worker (heartbeat stalled > max age)
can at worst make a job run twice; the first to finish records the result, the second is refused by the job
record's state check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from common.job_store import JobStore
from common.jobs import JobStatus
from common.keys import HOLDERS_KEY, held_key, owner_key, reap_lock_key
from common.workers import WorkerRegistry

log = logging.getLogger(__name__)

Publish = Callable[[str], object]  # enqueue diffbir.restore(job_id) again

# Delete the owner key only if it still names this worker (a newer owner may have taken the job over).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


class Ownership:
    """Which jobs this worker holds, and the requeueing of jobs held by workers that stopped heartbeating."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        worker_id: str,
        ttl_s: int,
        publish: Publish,
    ) -> None:
        self.redis = client
        self.store = store
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.publish = publish
        self.workers = WorkerRegistry(client)
        self.held_key = held_key(worker_id)
        self._release = client.register_script(_RELEASE)

    def claim(self, job_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(owner_key(job_id), self.worker_id, ex=self.ttl_s)
            pipe.sadd(self.held_key, job_id)
            # Normally emptied by release/reaping; the TTL bounds it if both are lost (e.g. Redis restored).
            pipe.expire(self.held_key, self.ttl_s)
            pipe.sadd(HOLDERS_KEY, self.worker_id)
            pipe.execute()

    def release(self, job_id: str) -> None:
        self._release(keys=[owner_key(job_id), self.held_key], args=[self.worker_id, job_id])

    def live_owner(self, job_id: str, max_age_s: float, now: float | None = None) -> str | None:
        """Another worker that holds this job and is still heartbeating, if any."""
        raw = self.redis.get(owner_key(job_id))
        owner = raw.decode() if isinstance(raw, bytes) else raw
        if not owner or owner == self.worker_id:
            return None
        return owner if self.workers.is_alive(owner, max_age_s, now) else None

    def requeue_from_dead_workers(self, max_age_s: float, now: float | None = None) -> int:
        """Publish the still-running jobs of every stale holder again; returns how many were requeued."""
        now = time.time() if now is None else now
        requeued = 0
        for raw_id in self.redis.smembers(HOLDERS_KEY):
            holder = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if holder == self.worker_id or self.workers.is_alive(holder, max_age_s, now):
                continue
            # One live worker reaps a given dead worker at a time (others skip until the lock expires).
            if not self.redis.set(reap_lock_key(holder), self.worker_id, nx=True, ex=60):
                continue
            held = held_key(holder)
            for raw_job in self.redis.smembers(held):
                job_id = raw_job.decode() if isinstance(raw_job, bytes) else str(raw_job)
                owner = self.redis.get(owner_key(job_id))
                job = self.store.get(job_id)
                if job is not None and job.status is JobStatus.running and owner in (holder, holder.encode()):
                    self.publish(job_id)
                    requeued += 1
                    log.warning("requeued job %s of lost worker %s", job_id, holder)
                self.redis.srem(held, job_id)
            self.redis.srem(HOLDERS_KEY, holder)
            self.redis.delete(reap_lock_key(holder))
        return requeued
