"""Sending webhooks: background threads that drain the durable outbox (``common.webhook_outbox``).

Every worker runs a few, so a slow receiver never holds the GPU and a sender that dies mid-delivery is
replaced by any other worker's (its lease runs out). Each try is one POST through the SSRF guard
(``common.webhooks.deliver``), signed per Standard Webhooks; failures are retried with exponential backoff
up to ``webhook_max_retries``, and a refused target or a final 4xx ends the message at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from common import telemetry
from common.faults import fault_point
from common.logging_setup import log_context
from common.settings import Settings
from common.webhook_outbox import Delivery, Outbox
from common.webhooks import deliver, host_of, signature_headers

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
Outcome = Callable[[str], None]  # called with "delivered" | "failed" once per message


class WebhookSender:
    """``threads`` daemon threads claiming due messages; ``stop`` lets a POST in flight finish."""

    def __init__(self, outbox: Outbox, settings: Settings, on_outcome: Outcome, threads: int = 2):
        self.outbox, self.settings, self.on_outcome = outbox, settings, on_outcome
        self.threads = threads
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"diffbir-webhook-{n}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self, timeout_s: float | None = None) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout_s)
        self._workers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.send_one()
            except redis.RedisError as exc:  # Redis away: the messages wait there; try again later
                log.warning("webhook outbox unavailable: %s", exc)
                busy = False
            except Exception:  # a bug must not stop the sender; the message is retried after its lease
                log.exception("webhook sender error")
                busy = False
            if not busy:
                self._stop.wait(self.settings.webhook_poll_interval_s)

    def send_one(self, now: float | None = None) -> bool:
        """Claim and try one due message; False when none was due."""
        delivery = self.outbox.claim(now)
        if delivery is None:
            return False
        # The span names the event, never the URL (callback URLs often carry a token); it joins the trace of
        # the change that queued the message, so one trace runs from the request to the webhook.
        attributes = {"diffbir.job_id": delivery.job_id, "diffbir.event": f"job.{delivery.event}"}
        parent = telemetry.context_of(delivery.traceparent)
        with log_context(job_id=delivery.job_id), telemetry.span_under("webhook", parent, attributes):
            self._try(delivery)
        return True

    def _try(self, delivery: Delivery) -> None:
        max_attempts = self.settings.webhook_max_retries + 1
        if delivery.attempt > max_attempts:  # earlier senders died during their tries: stop here
            self._give_up(delivery, f"{delivery.attempt - 1} attempts were lost")
            return
        s = self.settings
        secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
        fault_point("during_webhook")
        headers = signature_headers(delivery.id, delivery.body, secret, int(time.time()))
        result = deliver(
            delivery.url,
            delivery.body,
            headers,
            allowlist=s.webhook_allow_hosts,
            allow_private=s.webhook_allow_private,
            timeout_s=s.webhook_timeout_s,
        )
        if result.delivered:
            if self.outbox.done(delivery):
                log.info("webhook delivered", extra={"outcome": "delivered", "attempts": delivery.attempt})
                self.on_outcome("delivered")
        elif result.retryable and delivery.attempt < max_attempts:
            delay = min(MAX_BACKOFF_S, s.webhook_backoff_s * 2 ** (delivery.attempt - 1))
            log.info(
                "webhook %s to %s failed (%s); retry %d in %.1fs",
                delivery.id,
                host_of(delivery.url),
                result.error,
                delivery.attempt,
                delay,
            )
            self.outbox.retry_at(delivery, time.time() + delay)
        else:
            self._give_up(delivery, result.error or "")

    def _give_up(self, delivery: Delivery, why: str) -> None:
        # The host only: callback URLs often carry a token in their path or query.
        log.warning(
            "webhook %s to %s not delivered after %d attempt(s): %s",
            delivery.id,
            host_of(delivery.url),
            delivery.attempt,
            why,
            extra={"outcome": "failed", "attempts": delivery.attempt},
        )
        if self.outbox.done(delivery):
            self.on_outcome("failed")
