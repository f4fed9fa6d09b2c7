"""The worker's heartbeat thread: a beat in the worker registry every N seconds, so /readyz knows it is up.

Started only after the model is loaded (worker_ready), so a worker that cannot load never looks ready.
A Redis outage is logged and retried on the next beat; it never kills the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from common.workers import WorkerRegistry

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        registry: WorkerRegistry,
        worker_id: str,
        interval_s: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.on_beat = on_beat  # periodic housekeeping that must run while the worker is alive
        self.worker_id = worker_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        try:
            self.registry.beat(self.worker_id)
        except redis.RedisError as exc:
            log.warning("heartbeat failed (%s); retrying in %.1fs", exc, self.interval_s)
            return False
        if self.on_beat is not None:
            try:
                self.on_beat()
            except Exception:  # housekeeping must never stop the heartbeat (e.g. broker briefly away)
                log.exception("heartbeat housekeeping failed; will retry on the next beat")
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="diffbir-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        """Stop beating and deregister, so /readyz stops counting this worker at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)
            self._thread = None
        try:
            self.registry.remove(self.worker_id)
        except redis.RedisError as exc:
            log.warning("could not deregister worker %s: %s", self.worker_id, exc)
