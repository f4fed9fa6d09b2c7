"""One error hierarchy for the whole service.

Every error a client can see is a ``ServiceError`` carrying its HTTP status, a stable machine ``code`` and a
human ``title``; ``service/problems.py`` turns it into ``application/problem+json`` in one place. The worker
raises the same classes (e.g. ``InvalidImageError``) so a bad upload found late reads like one found
early.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra  # extra problem members, e.g. {"errors": [...]} for validation failures


class BadRequestError(ServiceError):
    status, code, title = 400, "bad_request", "Bad request"


class UnauthorizedError(ServiceError):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"

    def __init__(self, detail: str | None = None, **extra: Any):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="diffbir"'}, **extra)


class NotFoundError(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class RequestTimeoutError(ServiceError):
    status, code, title = 408, "request_timeout", "The request body arrived too slowly"

    def __init__(self, detail: str | None = None, **extra: Any):
        # The client may retry at once; "close" frees the connection a trickling client held.
        super().__init__(detail, headers={"Connection": "close"}, **extra)


class ConflictError(ServiceError):
    status, code, title = 409, "conflict", "Conflict"


class JobNotFinishedError(ConflictError):
    code, title = "job_not_finished", "The job has no result yet"


class JobStateError(ConflictError):
    code, title = "invalid_transition", "The job is not in a state that allows this"


class IdempotencyInProgressError(ConflictError):
    code, title = "idempotency_in_progress", "A request with this Idempotency-Key is still being processed"


class PayloadTooLargeError(ServiceError):
    status, code, title = 413, "payload_too_large", "Upload too large"


class UnsupportedMediaTypeError(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported image type"


class UnprocessableError(ServiceError):
    status, code, title = 422, "validation_error", "Invalid request"


class InvalidImageError(UnprocessableError):
    code, title = "invalid_image", "The image cannot be used"


class ImageTooLargeError(UnprocessableError):
    code, title = "image_too_large", "The image has too many pixels"


class IdempotencyKeyReusedError(UnprocessableError):
    code, title = "idempotency_key_reused", "Idempotency-Key was already used with a different request"


class TooManyRequestsError(ServiceError):
    status, code, title = 429, "queue_full", "Too many queued jobs, retry later"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after_s: int,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail, headers={**(headers or {}), "Retry-After": str(int(retry_after_s))}, **extra)


class ActiveJobsLimitError(TooManyRequestsError):
    code, title = "active_jobs_limit", "This API key has too many queued and running jobs"


class RateLimitedError(TooManyRequestsError):
    code, title = "rate_limited", "This API key submitted too many jobs recently"


class ServiceUnavailableError(ServiceError):
    status, code, title = 503, "unavailable", "A backing service is unavailable"

    def __init__(self, detail: str | None = None, *, retry_after_s: int = 5, **extra: Any):
        super().__init__(detail, headers={"Retry-After": str(int(retry_after_s))}, **extra)


class ServerBusyError(ServiceUnavailableError):
    code, title = "busy", "Too many uploads in progress on this API process, retry shortly"
