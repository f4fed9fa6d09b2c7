"""The job document of docs/design.md: its statuses, reason codes, parts and id format (no storage here).

Lifecycle::

    queued -> running -> succeeded | failed | canceled
    queued -> canceled | failed
    running -> running   (redelivery after a lost worker; attempts += 1)

``common.job_store`` applies these transitions on Redis; ``common.keys`` names the keys.
"""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from common.params import RestoreParams

ANONYMOUS_OWNER = "anonymous"
JOB_ID_PATTERN = r"^j_[A-Za-z0-9_-]{18,62}$"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class ErrorCode(StrEnum):
    bad_input = "bad_input"
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    internal = "internal"
    canceled = "canceled"
    worker_lost = "worker_lost"


class Progress(BaseModel):
    stage: str
    step: int = Field(ge=0)
    total: int = Field(ge=0)
    fraction: float = Field(ge=0.0, le=1.0)


class InputInfo(BaseModel):
    width: int
    height: int
    format: str
    bytes: int = 0
    conversions: list[str] = Field(default_factory=list)


class ResultInfo(BaseModel):
    url: str
    content_type: str
    width: int
    height: int
    bytes: int = 0
    faces: int | None = Field(
        None, description="unaligned_face only: faces found and restored (0: the sr restoration alone)."
    )


class JobError(BaseModel):
    code: ErrorCode
    message: str


class JobUrls(BaseModel):
    """Absolute URLs of the job's resources (from ``public_base_url``, else the submitting request)."""

    get: str = Field(description="The job document (GET).")
    cancel: str = Field(description="Cancel the job (POST).")
    result: str = Field(description="The restored image (GET), once the job succeeded.")
    events: str = Field(description="Server-Sent Events of status and progress (GET).")

    @classmethod
    def under(cls, base_url: str, job_id: str) -> JobUrls:
        job = f"{base_url.rstrip('/')}/v1/jobs/{job_id}"
        return cls(get=job, cancel=f"{job}/cancel", result=f"{job}/result", events=f"{job}/events")


class JobDocument(BaseModel):
    """The job as clients see it (GET /v1/jobs/{id}, submit and cancel answers, webhooks)."""

    id: str = Field(pattern=JOB_ID_PATTERN, examples=["j_3kq9T0bq1yZ6rV0m4sXc2w"])
    status: JobStatus = JobStatus.queued
    progress: Progress | None = None
    params: RestoreParams
    input: InputInfo
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage, once finished.")
    error: JobError | None = None
    attempts: int = 0
    result: ResultInfo | None = None
    urls: JobUrls | None = None
    expires_at: datetime | None = Field(
        None, description="When the job and its result are deleted (job TTL from its last status change)."
    )
    # What the worker ran: the parameters with its weights version's defaults filled in and the seed it
    # used (``params`` stays what the client sent), and that weights version.
    resolved: RestoreParams | None = None
    model_version: str | None = None
    # W3C trace context of the submitting request (common.telemetry); null when tracing is off. The worker
    # continues this trace whichever delivery runs the job; clients may quote its trace id.
    traceparent: str | None = None


class Job(JobDocument):
    """The stored record: the document plus its owner, which must stay the LAST field (see
    ``public_document``)."""

    owner: str = ANONYMOUS_OWNER  # hash of the API key; never shown to clients

    def public_dict(self) -> dict[str, Any]:
        """The document clients see (design.md): everything but the owner."""
        return self.model_dump(mode="json", exclude={"owner"})

    def to_redis(self) -> str:
        return self.model_dump_json()


_OWNER_FIELD = b',"owner":'


def public_document(raw: bytes, owner: str) -> bytes | None:
    """The stored document minus its owner, if ``owner`` owns it, without a pydantic round trip.

    Hand-written because the status route is the API's hottest: parsing and re-dumping the ``Job`` costs
    more CPU than the rest of the request. ``Job.to_redis`` writes compact JSON with ``owner`` as the last
    field, so the raw bytes end with ``,"owner":"<owner>"}``; ``,"`` cannot occur inside a JSON string
    (quotes there are escaped), so the last ``,"owner":`` is the field. The owner comparison is constant
    time. Returns None for another owner's job (callers answer 404). A document of any other shape (e.g.
    written by an older version) takes the slow, exact path.
    """
    head, sep, tail = raw.rpartition(_OWNER_FIELD)
    plain = tail.startswith(b'"') and tail.endswith(b'"}') and tail.count(b'"') == 2 and b"\\" not in tail
    if sep and plain:
        if not hmac.compare_digest(tail[1:-2], owner.encode()):
            return None
        return head + b"}"
    job = Job.model_validate_json(raw)
    if not hmac.compare_digest(job.owner.encode(), owner.encode()):
        return None
    return job.model_dump_json(exclude={"owner"}).encode()


def new_job_id() -> str:
    return "j_" + secrets.token_urlsafe(16)


_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_valid_job_id(job_id: str) -> bool:
    """Cheap shape check so junk ids never reach Redis key names."""
    return _JOB_ID.fullmatch(job_id) is not None


def result_url(job_id: str, urls: JobUrls | None = None) -> str:
    """Where the result is fetched: absolute when the job carries its URLs (jobs stored before they did
    get the path alone)."""
    return urls.result if urls is not None else f"/v1/jobs/{job_id}/result"


def utcnow() -> datetime:
    return datetime.now(UTC)
