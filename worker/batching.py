"""Micro-batching: after taking a job, claim a few *waiting* jobs with the same shape and settings straight
from the broker queue and run them through ``pipeline.restore_batch`` in one go.

Why straight from the queue (no side list): the API then needs no batching knowledge, and a job is never in
two places. Safety rests on one atomic step (a Lua script): a mate's broker message is removed from the queue
list AND parked under this worker (``diffbir:batch:parked:{worker_id}``) together, or not at all. So every
job's message is always either in the queue, parked under a worker, or acked after the job finished:

- this worker finishes a mate -> its parked message is dropped (the job record already says how it ended);
- this worker dies -> its lease lapses, and any live worker (``recover_dead_workers``, run on every lease
  tick) pushes the parked messages back onto the queue; the job is redelivered like any lost job
  (``attempts`` += 1, bounded by ``worker_max_attempts``).

Waiting is bounded (``batch_max_wait_s``, default 50 ms) and so is the batch (``batch_max_size``; 1 turns
batching off, the default). Per-job progress, cancel flags, results and failures stay separate: each mate has
its own ``Execution`` (``worker.execution``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable

import redis

from common.job_store import JobStore
from common.jobs import Job, JobStatus
from common.keys import PARKED_WORKERS_KEY, parked_key
from common.workers import WorkerRegistry

log = logging.getLogger(__name__)

SCAN_DEPTH = 64  # how many of the oldest queued messages one scan looks at

# Move one message from the queue list to this worker's parked hash, atomically. Returns 1 if claimed.
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[3])
  return 1
end
return 0
"""

# Put every parked message of one worker back at the consuming end of the queue, atomically.
_RESTORE = """
local entries = redis.call('HGETALL', KEYS[2])
for i = 2, #entries, 2 do
  redis.call('RPUSH', KEYS[1], entries[i])
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return #entries / 2
"""

# Put one parked message back at the consuming end of the queue (its batch was abandoned), atomically.
_REQUEUE = """
local message = redis.call('HGET', KEYS[2], ARGV[1])
if message then
  redis.call('RPUSH', KEYS[1], message)
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Fields of the job that must match for two jobs to share one batched model call (not seed, not delivery).
_KEY_EXCLUDE = {"seed", "output_format", "callback_url"}


def batch_key(job: Job) -> str:
    params = job.params.model_dump(exclude=_KEY_EXCLUDE)
    return json.dumps({"w": job.input.width, "h": job.input.height, **params}, sort_keys=True)


def job_id_of(raw: bytes) -> str | None:
    """The job id inside a kombu/Celery (protocol 2, JSON) message, or None for anything else."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") is None:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if len(args) == 1 and isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Batcher:
    """Claims batch mates for one worker and returns the messages of dead workers to the queue."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        worker_id: str,
        queue_name: str,
        task_name: str,
        max_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.store = store
        self.worker_id = worker_id
        self.queue = queue_name
        self.task_name = task_name
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.workers = WorkerRegistry(client)
        self.parked_key = parked_key(worker_id)
        self._claim = client.register_script(_CLAIM)
        self._restore = client.register_script(_RESTORE)
        self._requeue = client.register_script(_REQUEUE)

    @property
    def enabled(self) -> bool:
        return self.max_size > 1

    def claim_mates(self, first: Job, start: Callable[[str], Job | None]) -> list[Job]:
        """Claim up to ``max_size - 1`` queued jobs batchable with ``first``; ``start`` marks one running."""
        if not self.enabled:
            return []
        key = batch_key(first)
        mates: list[Job] = []
        seen = {first.id}
        deadline = self.clock() + self.max_wait_s
        while len(mates) < self.max_size - 1:
            for raw in self.redis.lrange(self.queue, -SCAN_DEPTH, -1)[::-1]:  # oldest (next to pop) first
                job_id = job_id_of(raw)
                if job_id is None or job_id in seen:
                    continue
                seen.add(job_id)
                candidate = self.store.get(job_id)
                if (
                    candidate is None
                    or candidate.status is not JobStatus.queued
                    or batch_key(candidate) != key
                ):
                    continue
                if not self._claim(
                    keys=[self.queue, self.parked_key, PARKED_WORKERS_KEY], args=[raw, job_id, self.worker_id]
                ):
                    continue  # another worker took it first
                started = start(job_id)
                if started is None:  # canceled or finished meanwhile: nothing to run
                    self.release(job_id)
                    continue
                mates.append(started)
                if len(mates) == self.max_size - 1:
                    break
            if len(mates) == self.max_size - 1 or self.clock() >= deadline:
                break
            time.sleep(min(0.005, max(0.0, deadline - self.clock())))
        if mates:
            log.info("batched %d job(s) with %s", len(mates), first.id)
        return mates

    def release(self, job_id: str) -> None:
        """The mate finished (its record says how): forget its parked message."""
        self.redis.hdel(self.parked_key, job_id)

    def requeue(self, job_id: str) -> bool:
        """The mate's batch failed before it ended: hand its message back to the queue to run again."""
        return bool(self._requeue(keys=[self.queue, self.parked_key], args=[job_id]))

    def requeue_all(self) -> int:
        """This worker lets go of every parked message (shutdown past its grace)."""
        keys = [self.queue, self.parked_key, PARKED_WORKERS_KEY]
        return int(self._restore(keys=keys, args=[self.worker_id]))

    def recover_dead_workers(self) -> int:
        """Requeue the parked messages of workers whose lease has lapsed."""
        restored = 0
        for raw_id in self.redis.smembers(PARKED_WORKERS_KEY):
            worker_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if worker_id == self.worker_id or self.workers.has_lease(worker_id):
                continue
            count = int(
                self._restore(keys=[self.queue, parked_key(worker_id), PARKED_WORKERS_KEY], args=[worker_id])
            )
            if count:
                log.warning("requeued %d batched job(s) of lost worker %s", count, worker_id)
            restored += count
        return restored
