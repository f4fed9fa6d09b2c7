"""``GET /v1/jobs``: the caller's jobs, newest first, a page at a time (``common.job_index``)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from common.errors import UnprocessableError
from common.job_index import MAX_PAGE, BadCursorError, JobIndex
from common.jobs import JobStatus
from service import openapi_docs as docs
from service.auth import caller_of

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs", summary="List your jobs, newest first", **docs.LIST_JOBS)
async def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs with this status.")] = None,
) -> Response:
    owner = caller_of(request)
    index: JobIndex = request.app.state.services.index
    try:
        page = await index.page(owner, limit, cursor, status)
    except BadCursorError as exc:
        raise UnprocessableError(str(exc), errors=[{"loc": ["query", "cursor"], "msg": str(exc)}]) from exc
    following = None
    if page.next_cursor is not None:
        query = {"limit": limit, "cursor": page.next_cursor} | ({"status": status.value} if status else {})
        following = f"/v1/jobs?{urlencode(query)}"
    # The stored documents are joined as they are (no parse and re-dump per job, as in GET /v1/jobs/{id}).
    body = b'{"jobs":[' + b",".join(page.documents) + b"],"
    body += b'"next_cursor":' + _json_string(page.next_cursor) + b',"next":' + _json_string(following) + b"}"
    headers = {"Link": f'<{following}>; rel="next"'} if following else None
    return Response(body, media_type="application/json", headers=headers)


def _json_string(value: str | None) -> bytes:
    # Cursors are url-safe base64 and the URL is urlencoded: neither needs JSON escaping.
    return b"null" if value is None else b'"' + value.encode() + b'"'
