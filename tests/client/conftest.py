"""A scripted HTTP peer for the client tests: each test states the exact answers the API gives, in order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import httpx
import pytest

JOB_ID = "j_" + "A" * 22


def job_doc(status: str = "queued", stage: str = "", step: int = 0, total: int = 0, **extra: object) -> dict:
    doc: dict = {
        "id": JOB_ID,
        "status": status,
        "progress": {
            "stage": stage,
            "step": step,
            "total": total,
            "fraction": step / total if total else 0.0,
        },
        "error": None,
        "result": None,
    }
    doc.update(extra)
    return doc


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    ctype = "application/problem+json" if status >= 400 else "application/json"
    return httpx.Response(
        status, content=json.dumps(body), headers={"content-type": ctype, **(headers or {})}
    )


def problem(status: int, code: str, detail: str, **headers: str) -> httpx.Response:
    body = {
        "type": "about:blank",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    return json_response(status, body, headers)


class ScriptedAPI:
    """Answers requests from per-route queues and records every request it saw.

    A job's event stream that a test did not script answers 404, as a server without the endpoint would:
    ``wait`` then polls, which is what the polling tests drive.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[httpx.Response | Exception]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, answers: Iterable[httpx.Response | Exception]) -> ScriptedAPI:
        self.routes.setdefault((method, path), []).extend(answers)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path if request.url.host == "api.test" else str(request.url))
        queue = self.routes.get(key)
        if not queue and key[0] == "GET" and key[1].endswith("/events"):
            return problem(404, "not_found", "no such route")
        if not queue:
            raise AssertionError(f"unexpected request {key}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@pytest.fixture
def api() -> ScriptedAPI:
    return ScriptedAPI()


class FakeClock:
    """Replaces time.sleep/time.monotonic so polling tests run instantly and can check the delays."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.delays.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
