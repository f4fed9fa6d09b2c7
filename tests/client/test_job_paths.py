"""Job ids are data, not paths: the client never lets one address another route."""

from __future__ import annotations

import httpx
import pytest

from client import APIError, RestoreClient


def test_a_hostile_job_id_cannot_reach_another_route() -> None:
    paths: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path)
        return httpx.Response(404, json={"code": "not_found", "detail": "no job"})

    with RestoreClient("http://api.test", "secret", transport=httpx.MockTransport(handler)) as client:
        for call in (client.get, client.result, client.cancel):
            with pytest.raises(APIError):
                call("../../metrics?x=")
    assert paths and all(p.startswith(b"/v1/jobs/..%2F..%2Fmetrics%3Fx%3D") for p in paths), paths
