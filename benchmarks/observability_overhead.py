"""What traces and structured logs cost, measured in-process with same-run baselines (ratios, not absolutes).

1. The API's request context (``service.observability.RequestContextMiddleware``: request id, response
   header, log context) around a minimal FastAPI route, called straight through ASGI (no server, no client,
   so the middleware is not drowned in socket time): bare app vs + middleware (text logs: no access line)
   vs + middleware with the JSON access line (written to a null stream) vs + tracing on (FastAPI
   instrumentation; spans made, none exported), for a sampled and an unsampled request, and with FastAPI's
   own telemetry (``FastAPI(telemetry=...)``) in place of the instrumentation, for comparison.
2. One access-style log line through our handler, text vs JSON (JSON mode replaces uvicorn's text access
   line with the middleware's JSON one, so their difference is what JSON costs per request).
3. The worker's per-step hook (``JobTrace.stage`` as the sampler calls it every step, tracing off) vs an
   empty function, and ``telemetry.span`` off vs ``contextlib.nullcontext()``.

    .venv/bin/python benchmarks/observability_overhead.py [--requests 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Response  # noqa: E402

from common import telemetry  # noqa: E402
from common.jobs import InputInfo, Job, utcnow  # noqa: E402
from common.logging_setup import make_handler  # noqa: E402
from common.params import RestoreParams  # noqa: E402
from common.settings import Settings  # noqa: E402
from service.observability import RequestContextMiddleware  # noqa: E402
from worker.job_trace import JobTrace  # noqa: E402


def make_app(
    middleware: bool, access_log: bool = False, traced: bool = False, native: bool = False
) -> FastAPI:
    if native:  # FastAPI's own telemetry (FastAPI >= 0.165) instead of opentelemetry-instrumentation-fastapi
        config = {"metrics": False, "logs": False, "operation_spans": False}
        app = FastAPI(telemetry={"tracer_provider": telemetry.provider(), **config})  # type: ignore[typeddict-item]
    else:
        app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        return Response(b'{"status":"running"}', media_type="application/json")

    if middleware:
        app.add_middleware(RequestContextMiddleware, access_log=access_log)
    if traced:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=telemetry.provider(), exclude_spans=["receive", "send"]
        )
    return app


async def drive(app: FastAPI, n: int) -> float:
    """Seconds per request for ``n`` GETs through the ASGI interface."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaa",
        "raw_path": b"/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaa",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    for _ in range(200):  # warm-up: routing caches, middleware stack build
        await app(dict(scope), receive, send)
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / n


def per_call(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="alternate variants this often; best of each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    access = logging.getLogger("service.access")
    access.addHandler(make_handler(Settings(log_format="json"), "api", stream=io.StringIO()))
    access.propagate = False
    access.setLevel(logging.INFO)

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    # Traced variants: spans are made and ended but no processor exports them (the exporter's batching runs
    # on its own thread); "unsampled" is a request the sampler drops (OTEL_TRACES_SAMPLER ratio).
    providers = {
        "traced_json": TracerProvider(),
        "traced_unsampled_json": TracerProvider(sampler=ALWAYS_OFF),
        "traced_fastapi_native_json": TracerProvider(),
    }
    variants: dict[str, FastAPI] = {
        "bare": make_app(False),
        "request_context_text": make_app(True, access_log=False),
        "request_context_json_access_line": make_app(True, access_log=True),
    }
    for name, provider in providers.items():
        telemetry.install(provider)
        native = name == "traced_fastapi_native_json"
        variants[name] = make_app(True, access_log=True, traced=not native, native=native)
    telemetry.uninstall()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, app in variants.items():
            if name in providers:
                telemetry.install(providers[name])
            seconds = asyncio.run(drive(app, args.requests))
            telemetry.uninstall()
            best[name] = min(best.get(name, float("inf")), seconds)
            access.handlers[0].stream = io.StringIO()  # type: ignore[attr-defined]  # keep memory flat

    job = Job(
        id="j_" + "a" * 22,
        params=RestoreParams(),
        input=InputInfo(width=1, height=1, format="png"),
        created_at=utcnow(),
    )
    trace = JobTrace(job)
    trace.stage("sampler")
    n = args.requests * 10
    hook = min(per_call(lambda: trace.stage("sampler"), n) for _ in range(args.rounds))
    empty = min(per_call(lambda: None, n) for _ in range(args.rounds))
    span_off = min(per_call(lambda: telemetry.span("x"), n) for _ in range(args.rounds))
    null = min(per_call(contextlib.nullcontext, n) for _ in range(args.rounds))

    lines = {}
    for fmt in ("text", "json"):
        logger = logging.getLogger(f"bench.{fmt}")
        logger.addHandler(make_handler(Settings(log_format=fmt), "api", stream=io.StringIO()))
        logger.propagate = False
        logger.setLevel(logging.INFO)
        fields = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": 200, "duration_s": 0.001}

        def line(logger: logging.Logger = logger, fields: dict[str, Any] = fields) -> None:
            logger.info('127.0.0.1:1 - "GET /v1/jobs/j_x HTTP/1.1" 200', extra=fields)

        lines[fmt] = min(per_call(line, args.requests) for _ in range(args.rounds))

    base = best["bare"]
    result = {
        "api_us_per_request": {k: round(v * 1e6, 2) for k, v in best.items()},
        "api_ratio_to_bare": {k: round(v / base, 3) for k, v in best.items()},
        "log_line_us": {k: round(v * 1e6, 2) for k, v in lines.items()},
        "worker_step_hook_ns": round(hook * 1e9, 1),
        "empty_call_ns": round(empty * 1e9, 1),
        "span_off_ns": round(span_off * 1e9, 1),
        "nullcontext_ns": round(null * 1e9, 1),
        "requests": args.requests,
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
