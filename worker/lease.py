"""The worker's lease thread: renews ``diffbir:lease:{worker}`` every quarter of ``worker_lease_ttl_s`` and,
on every tick, runs the recovery housekeeping (requeue the jobs of workers whose lease lapsed, sweep the
outbox, hand back jobs this worker could not finish through an outage).

Separate from the heartbeat (``worker.heartbeat``, readiness for /readyz, every 10 s, 60 s tolerance): a
lease is about "does this worker still hold its jobs" and must lapse fast, so a dead worker's job runs again
within about ``worker_lease_ttl_s``. A Redis outage is logged and retried on the next tick; it never kills
the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis

from common.workers import WorkerRegistry

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        registry: WorkerRegistry,
        worker_id: str,
        ttl_s: float,
        housekeeping: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.registry = registry
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.interval_s = ttl_s / 4
        self.housekeeping = list(housekeeping)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool:
        """Renew the lease, then the housekeeping; False when Redis is away (retried next tick)."""
        try:
            self.registry.renew_lease(self.worker_id, self.ttl_s)
        except redis.RedisError as exc:
            log.warning("lease renewal failed (%s); retrying in %.1fs", exc, self.interval_s)
            return False
        for task in self.housekeeping:
            try:
                task()
            except Exception:  # housekeeping must never stop the lease (e.g. broker briefly away)
                log.exception("lease housekeeping failed; will retry on the next tick")
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self.tick()
        self._thread = threading.Thread(target=self._run, name="diffbir-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def stop(self) -> None:
        """Stop renewing and drop the lease (a clean exit: nothing of ours is left to recover)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None
        try:
            self.registry.drop_lease(self.worker_id)
        except redis.RedisError as exc:
            log.warning("could not drop the lease of %s: %s", self.worker_id, exc)
