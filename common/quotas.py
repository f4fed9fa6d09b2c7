"""Per-key quotas: a cap on a key's active (queued + running) jobs and a sliding-window submit rate.

One Lua script checks and takes both at once, so concurrent submissions of one key (on any number of API
processes) can never overshoot, and a refused submission consumes nothing. A job's active slot is released
by ``JobStore`` in the same MULTI that makes the job terminal (``queue_release``); a slot also carries an
expiry, so a job whose record vanished (expired while queued) cannot hold it forever. The rate window is a
log of submission times (a zset per key, at most ``limit`` entries): exact, unlike a fixed window that lets
twice the limit through around a window boundary.

Hand-written: rate-limit libraries count requests, not jobs that end later, and none releases a slot from
inside another transaction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from common.keys import active_jobs_key, submits_key
from common.settings import Settings

# KEYS: active zset, submit log zset. ARGV: now_ms, max_active, slot_expiry_ms, rate_limit, window_ms, job_id.
# Returns {verdict (0 ok, 1 too many active, 2 rate), active, used, reset_ms}.
_ADMIT = """
local now = tonumber(ARGV[1])
local max_active = tonumber(ARGV[2])
local slot_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local active = redis.call('ZCARD', KEYS[1])
local used = redis.call('ZCARD', KEYS[2])
local reset = window
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
if max_active > 0 and active >= max_active then return {1, active, used, reset} end
if limit > 0 and used >= limit then return {2, active, used, reset} end
if max_active > 0 then
  redis.call('ZADD', KEYS[1], now + slot_ms, ARGV[6])
  redis.call('PEXPIRE', KEYS[1], slot_ms)
end
if limit > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], window)
  used = used + 1
end
return {0, active + 1, used, reset}
"""


@dataclass(frozen=True)
class Admission:
    """The verdict of one submission and what the RateLimit-* headers say about the key's rate."""

    allowed: bool
    reason: str  # "" | "active_jobs" | "rate"
    active: int
    rate_limit: int
    rate_used: int
    reset_s: int  # seconds until the oldest submission in the window leaves it

    def headers(self, window_s: int) -> dict[str, str]:
        """IETF draft RateLimit header fields (draft-ietf-httpapi-ratelimit-headers: the -07 trio plus
        RateLimit-Policy), describing the submit rate. Empty when the rate is not limited."""
        if self.rate_limit <= 0:
            return {}
        return {
            "RateLimit-Limit": str(self.rate_limit),
            "RateLimit-Remaining": str(max(0, self.rate_limit - self.rate_used)),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.rate_limit};w={window_s}",
        }


class QuotaGate:
    """The API's admission check for one owner's submission."""

    def __init__(self, client: aioredis.Redis, settings: Settings):
        self.settings = settings
        self.redis = client
        self._admit = client.register_script(_ADMIT)

    @property
    def enabled(self) -> bool:
        return self.settings.max_active_jobs_per_key > 0 or self.settings.submit_rate_per_key > 0

    async def admit(self, owner: str, job_id: str, now: float | None = None) -> Admission:
        s = self.settings
        now_ms = int((time.time() if now is None else now) * 1000)
        verdict, active, used, reset_ms = await self._admit(
            keys=[active_jobs_key(owner), submits_key(owner)],
            args=[
                now_ms,
                s.max_active_jobs_per_key,
                s.job_ttl_seconds * 1000,
                s.submit_rate_per_key,
                s.submit_rate_window_s * 1000,
                job_id,
            ],
        )
        reason = {0: "", 1: "active_jobs", 2: "rate"}[int(verdict)]
        return Admission(
            allowed=not reason,
            reason=reason,
            active=int(active),
            rate_limit=s.submit_rate_per_key,
            rate_used=int(used),
            reset_s=max(1, math.ceil(int(reset_ms) / 1000)),
        )

    async def release(self, owner: str, job_id: str) -> None:
        """Give back a slot taken for a submission that was not stored after all."""
        await self.redis.zrem(active_jobs_key(owner), job_id)


def queue_release(pipe: Any, owner: str, job_id: str) -> None:
    """Queue the release of a finished job's active slot on a (sync or async) pipeline, inside its MULTI."""
    pipe.zrem(active_jobs_key(owner), job_id)
