"""OpenAPI descriptions of the list and live-progress routes (``service.job_list``, ``service.events``)."""

from __future__ import annotations

from typing import Any

from service.openapi_docs import EXAMPLE_JOB


def _problem(code: str, status: int, description: str) -> dict[str, Any]:
    example = {"type": f"urn:diffbir:problem:{code}", "title": "...", "status": status, "code": code}
    return {"description": description, "content": {"application/problem+json": {"example": example}}}


_CURSOR = "MTc2NzI2ODgwMDAwMDAwMDpqXzNrcTlUMGJxMXlaNnJWMG00c1hjMnc"
_COMMON = {
    401: _problem("unauthorized", 401, "Missing or invalid API key"),
    503: _problem("unavailable", 503, "Redis unavailable (events: too many open streams); see Retry-After"),
}

LIST_JOBS: dict[str, Any] = {
    "responses": {
        200: {
            "description": "A page of job documents, newest first. `next_cursor` (also in `next` and a "
            "`Link: rel=next` header) fetches the following page; null on the last one. A page may hold "
            "fewer jobs than `limit` when a `status` filter matched little: go on while `next_cursor` is "
            "set.",
            "content": {
                "application/json": {
                    "example": {
                        "jobs": [EXAMPLE_JOB],
                        "next_cursor": _CURSOR,
                        "next": f"/v1/jobs?limit=20&cursor={_CURSOR}",
                    }
                }
            },
        },
        **_COMMON,
        422: _problem("validation_error", 422, "A bad limit, status or cursor"),
    }
}

EVENTS: dict[str, Any] = {
    "response_class": None,
    "responses": {
        200: {
            "description": "`text/event-stream`. First event `status` (the job now), then `status` and "
            "`progress` events as they happen, each with the job document as `data` and an `id` to resume "
            "from (`Last-Event-ID`); `: ping` comments keep the connection alive. The stream ends after the "
            "event whose job status is succeeded, failed or canceled.",
            "content": {
                "text/event-stream": {
                    "example": 'event: progress\nid: 1767268800000-3\ndata: {"id": "j_...", '
                    '"status": "running", "progress": {"stage": "sampler", "step": 12, "total": 50, '
                    '"fraction": 0.24}, ...}\n\n'
                }
            },
        },
        **_COMMON,
        404: _problem("not_found", 404, "No such job (or not yours)"),
    },
}
del EVENTS["response_class"]
