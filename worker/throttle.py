"""Rate limits for a running job's Redis traffic: which progress events to write, when to re-read the cancel
flag. The sampler reports every step (tens per second on a GPU); Redis needs a few writes a second at most.

Hand-written: rate-limit libraries delay or refuse calls, while these answer "send this one?" and drop the
rest, which is what progress reporting wants (Cog's ``should_send_response`` does the same).
"""

from __future__ import annotations

import math


class Every:
    """Due at most once per ``interval_s``; the first call is always due."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -math.inf

    def due(self, now: float) -> bool:
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True


class ProgressThrottle:
    """Whether a progress event is worth sending: one per ``interval_s``, and sooner when the stage changes
    (a client sees "sampler" start at once), but never within ``stage_gap_s`` of the last one, so stages that
    follow each other quickly cannot flood Redis."""

    def __init__(self, interval_s: float, stage_gap_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.stage_gap_s = stage_gap_s
        self._last_sent = -math.inf
        self._last_stage = ""

    def should_send(self, stage: str, now: float) -> bool:
        elapsed = now - self._last_sent
        new_stage = stage != self._last_stage
        if elapsed >= self.interval_s or (new_stage and elapsed >= self.stage_gap_s):
            self._last_sent, self._last_stage = now, stage
            return True
        return False
