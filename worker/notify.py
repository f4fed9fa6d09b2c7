"""Telling the client a job ended: its webhook (``job.succeeded|failed|canceled``), signed and sent from a
background pool so a slow receiver never holds the GPU. Delivery rules (SSRF checks, retries, signing) live in
``common.webhooks``."""

from __future__ import annotations

from typing import Any

from common.faults import fault_point
from common.jobs import Job, JobStatus
from common.webhooks import deliver
from worker.context import WorkerContext

_FINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def webhook_payload(job: Job) -> dict[str, Any]:
    return {"event": f"job.{job.status.value}", "job": job.public_dict()}


def notify(ctx: WorkerContext, job: Job) -> None:
    """Queue the job's webhook, if it asked for one and has ended."""
    if job.params.callback_url and job.status in _FINAL:
        ctx.webhook_pool.submit(send_webhook, ctx, job)


def send_webhook(ctx: WorkerContext, job: Job) -> bool:
    s = ctx.settings
    assert job.params.callback_url is not None
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    fault_point("during_webhook")
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
    ctx.metrics.webhooks.labels(outcome="delivered" if result.delivered else "failed").inc()
    return result.delivered
