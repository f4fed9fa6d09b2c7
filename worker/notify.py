"""Telling the client a job ended: its webhook (``job.succeeded|failed|canceled``), signed and sent from a
background pool so a slow receiver never holds the GPU. Delivery rules (SSRF checks, retries, signing) live in
``common.webhooks``."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from common import telemetry
from common.jobs import Job, JobStatus
from common.webhooks import deliver
from worker.context import WorkerContext

log = logging.getLogger(__name__)

_FINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def webhook_payload(job: Job) -> dict[str, Any]:
    return {"event": f"job.{job.status.value}", "job": job.public_dict()}


def notify(ctx: WorkerContext, job: Job) -> None:
    """Queue the job's webhook, if it asked for one and has ended."""
    if job.params.callback_url and job.status in _FINAL:
        # In a copy of this context: the delivery's span joins the job's trace, its log lines the job's id.
        ctx.webhook_pool.submit(contextvars.copy_context().run, send_webhook, ctx, job)


def send_webhook(ctx: WorkerContext, job: Job) -> bool:
    s = ctx.settings
    assert job.params.callback_url is not None
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    # The span names the event, never the URL: callback URLs often carry a token.
    with telemetry.span("webhook", {"diffbir.job_id": job.id, "diffbir.event": f"job.{job.status.value}"}):
        result = deliver(
            job.params.callback_url,
            webhook_payload(job),
            secret,
            event=f"job.{job.status.value}",
            allowlist=s.webhook_allow_hosts,
            allow_private=s.webhook_allow_private,
            max_attempts=s.webhook_max_retries + 1,
            backoff_s=s.webhook_backoff_s,
            timeout_s=s.webhook_timeout_s,
        )
    outcome = "delivered" if result.delivered else "failed"
    log.info("webhook %s", outcome, extra={"job_id": job.id, "outcome": outcome, "attempts": result.attempts})
    ctx.metrics.webhooks.labels(outcome=outcome).inc()
    return result.delivered
