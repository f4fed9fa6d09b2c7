"""Fast recovery of jobs whose worker died or let go, without waiting for the broker's visibility timeout.

The broker alone redelivers a dead worker's unacked message only after ``broker_visibility_timeout_s``
(an hour by default, since it must exceed the hard time limit). To do better, every worker records which jobs
it holds (``diffbir:owner:{job}`` -> worker id, and the set ``diffbir:held:{worker}``), written by the
same transaction that marks the job running (``JobStore.claim``), and keeps a short lease
(``diffbir:lease:{worker}``, renewed every ``worker_lease_ttl_s / 4`` by ``worker.lease``). Every few seconds
each live worker looks for holders whose lease expired and hands each of their jobs back: the ownership is
dropped and the job goes into the outbox in one Lua step, then a fresh ``diffbir.restore(job_id)`` is
published at the FRONT of the queue. A crash between the two steps leaves the job in the outbox, whose sweep
(``worker.outbox``) republishes it.

Duplicates are harmless by construction: a delivery of a job that is ``running`` under a worker with a live
lease is refused by ``claim``, a finished job is skipped anyway, and the original message that the broker
eventually restores finds the job finished. A worker wrongly presumed dead (its lease lapsed during a Redis
outage) can at worst make a job run twice; the attempt number fences its writes, so only one outcome counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from common.job_store import Claim, JobStore
from common.jobs import JobStatus
from common.keys import HOLDERS_KEY, OUTBOX_KEY, held_key, owner_key, reap_lock_key
from common.workers import WorkerRegistry

log = logging.getLogger(__name__)

Publish = Callable[[str], object]  # enqueue diffbir.restore(job_id) again, at the front of the queue

# Delete the owner key only if it still names this worker (a newer owner may have taken the job over).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# Hand one job of ARGV[1] back: if it still owns the job, drop the ownership and put the job in the outbox
# (so it gets a message even if the publish that follows never happens); forget it in the holder's set.
_HAND_BACK = """
local handed = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  handed = 1
end
redis.call('SREM', KEYS[2], ARGV[2])
return handed
"""


class Ownership:
    """The jobs this worker holds, and hand-backs (its own jobs, or those of workers whose lease lapsed)."""

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
        self._hand_back = client.register_script(_HAND_BACK)

    def claim(self, job_id: str) -> Claim:
        """Mark the job running as this worker's attempt, with its ownership, in one transaction."""
        claim = self.store.claim(job_id, self.worker_id, self.ttl_s)
        if claim.job is not None:
            # Normally emptied by release/reaping; the TTL bounds it if both are lost (e.g. Redis restored).
            self.redis.expire(self.held_key, self.ttl_s)
        return claim

    def release(self, job_id: str) -> None:
        self._release(keys=[owner_key(job_id), self.held_key], args=[self.worker_id, job_id])

    def held(self, worker_id: str | None = None) -> list[str]:
        return [_text(raw) for raw in self.redis.smembers(held_key(worker_id or self.worker_id))]

    def hand_back(self, job_id: str, holder: str | None = None) -> bool:
        """Give a still-running job of ``holder`` (default: this worker) back to the queue, at its front.

        Returns whether a message was published (False: the job had ended or another worker holds it).
        """
        holder = holder or self.worker_id
        keys = [owner_key(job_id), held_key(holder), OUTBOX_KEY]
        if not self._hand_back(keys=keys, args=[holder, job_id, time.time()]):
            return False
        job = self.store.get(job_id)
        if job is None or job.status is not JobStatus.running:
            self.redis.zrem(OUTBOX_KEY, job_id)  # it ended meanwhile: nothing to run
            return False
        self.publish(job_id)
        return True

    def hand_back_all(self) -> int:
        """This worker lets go of everything it holds (shutdown past its grace, or a leftover of a previous
        process with the same worker id)."""
        return sum(self.hand_back(job_id) for job_id in self.held())

    def keep_holder_entry(self) -> None:
        """A reaper that judged this worker dead during a lapse may have dropped it from ``holders``: while
        it holds jobs, make sure it is listed (else its jobs would be missed if it really died later)."""
        if self.redis.scard(self.held_key):
            self.redis.sadd(HOLDERS_KEY, self.worker_id)

    def requeue_from_dead_workers(self) -> int:
        """Hand back the still-running jobs of every holder whose lease expired; returns how many."""
        requeued = 0
        for raw_id in self.redis.smembers(HOLDERS_KEY):
            holder = _text(raw_id)
            if holder == self.worker_id or self.workers.has_lease(holder):
                continue
            # One live worker reaps a given dead worker at a time (others skip until the lock expires).
            if not self.redis.set(reap_lock_key(holder), self.worker_id, nx=True, ex=60):
                continue
            for job_id in self.held(holder):
                if self.hand_back(job_id, holder):
                    requeued += 1
                    log.warning("requeued job %s of lost worker %s at the front of the queue", job_id, holder)
            self.redis.srem(HOLDERS_KEY, holder)
            self.redis.delete(reap_lock_key(holder))
        return requeued


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
