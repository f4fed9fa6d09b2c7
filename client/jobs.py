"""The job document as the client sees it, and the polling schedule. No I/O here, so it is easy to test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Progress:
    stage: str = ""
    step: int = 0
    total: int = 0
    fraction: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Progress:
        if not data:
            return cls()
        return cls(
            stage=str(data.get("stage") or ""),
            step=int(data.get("step") or 0),
            total=int(data.get("total") or 0),
            fraction=float(data.get("fraction") or 0.0),
        )


@dataclass(frozen=True)
class Job:
    """A snapshot of ``GET /v1/jobs/{id}``; ``raw`` keeps every field, including ones added later."""

    id: str
    status: str
    progress: Progress = field(default_factory=Progress)
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        if not isinstance(data, dict) or "id" not in data or "status" not in data:
            raise ValueError(f"not a job document: {data!r:.200}")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            progress=Progress.from_dict(data.get("progress")),
            error=data.get("error"),
            result=data.get("result"),
            raw=data,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class JobPage:
    """A page of ``GET /v1/jobs``: jobs newest first, and the cursor of the next page (None: last page)."""

    jobs: list[Job]
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPage:
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise ValueError(f"not a job list: {data!r:.200}")
        cursor = data.get("next_cursor")
        jobs = [Job.from_dict(job) for job in data["jobs"]]
        return cls(jobs=jobs, next_cursor=str(cursor) if cursor else None)


class PollSchedule:
    """Delays between status polls: short while the job moves, growing (x``factor``) while it does not.

    A queued job may wait minutes, so polling every 0.25 s would be wasted load; a running job changes step
    every fraction of a second, so a long delay would make the progress bar jerky. Resetting on change gives
    both.
    """

    def __init__(self, initial: float = 0.25, factor: float = 1.5, maximum: float = 5.0):
        if initial <= 0 or factor < 1 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial, self.factor, self.maximum = initial, factor, maximum
        self._delay = initial
        self._last: tuple[str, Progress] | None = None

    def next_delay(self, job: Job) -> float:
        state = (job.status, job.progress)
        if state != self._last:
            self._last = state
            self._delay = self.initial
        else:
            self._delay = min(self._delay * self.factor, self.maximum)
        return self._delay
