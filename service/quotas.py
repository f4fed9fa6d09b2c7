"""Per-key quotas at submit: admit a new job or answer 429 with Retry-After and RateLimit-* headers.

The counting is ``common.quotas`` (one Lua call, atomic across API processes); this module turns its verdict
into the HTTP answer.
"""

from __future__ import annotations

from common.errors import ActiveJobsLimitError, RateLimitedError
from common.quotas import QuotaGate


async def admit(gate: QuotaGate, owner: str, job_id: str) -> dict[str, str]:
    """Take a quota slot for ``job_id``; the RateLimit-* headers for the answer. Raises the 429s."""
    if not gate.enabled:
        return {}
    settings = gate.settings
    admission = await gate.admit(owner, job_id)
    headers = admission.headers(settings.submit_rate_window_s)
    if admission.reason == "active_jobs":
        raise ActiveJobsLimitError(
            f"{admission.active} jobs of this key are queued or running "
            f"(limit {settings.max_active_jobs_per_key}); retry when one has finished",
            retry_after_s=settings.retry_after_seconds,
            headers=headers,
        )
    if admission.reason == "rate":
        raise RateLimitedError(
            f"{admission.rate_used} submissions in the last {settings.submit_rate_window_s}s "
            f"(limit {settings.submit_rate_per_key})",
            retry_after_s=admission.reset_s,
            headers=headers,
        )
    return headers
