"""``create_app(settings)``: the FastAPI application factory (clients are built in the lifespan)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from common.settings import Settings, get_settings
from service import discovery, events, job_list, openapi_docs
from service.app_state import Services
from service.metrics import ApiMetrics, MetricsMiddleware
from service.observability import install_observability
from service.page import install_page
from service.problems import install_problem_handlers
from service.routes import api, ops

log = logging.getLogger(__name__)

DESCRIPTION = """
Asynchronous blind image restoration with DiffBIR.

Submit an image with `POST /v1/restore` (a multipart upload, or JSON with the image as an https URL or a data
URI; `Prefer: wait=N` answers once the job finished, up to N seconds), poll `GET /v1/jobs/{id}` (or follow
`GET /v1/jobs/{id}/events`), fetch `GET /v1/jobs/{id}/result`; `GET /v1/jobs` lists your jobs.
Errors are `application/problem+json` with a stable `code`. When API keys are configured, send
`Authorization: Bearer <key>`; a key sees only its own jobs.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, metrics)
        app.state.services = services
        log.info(
            "API ready: storage=%s auth=%s max_queue_depth=%d",
            settings.storage_backend,
            "on" if services.auth.enabled else "off",
            settings.max_queue_depth,
        )
        try:
            yield
        finally:
            await services.aclose()

    # The docs pages are served by service.page with local assets (FastAPI's own load from a CDN).
    app = FastAPI(
        title="DiffBIR restoration API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_observability(app, settings)
    # Routes are added flat rather than with include_router: this FastAPI version dispatches an included
    # router as a nested branch, a second route match on every request (measurable on the status route).
    app.router.routes.extend(
        [*api.routes, *job_list.router.routes, *events.router.routes, *discovery.router.routes, *ops.routes]
    )
    install_page(app, settings)
    _serve_head_where_get(app)
    openapi_docs.install(app, bearer_auth=bool(settings.api_keys))
    return app


def _serve_head_where_get(app: FastAPI) -> None:
    """HEAD on every GET route (RFC 9110; FastAPI's routes, unlike Starlette's, serve only the methods they
    name). Separate routes kept out of the schema, so operations and their ids stay one per GET; uvicorn
    sends the headers of the GET answer without its body."""
    for route in list(app.router.routes):
        if not isinstance(route, APIRoute) or "GET" not in route.methods:
            continue
        if "text/event-stream" not in route.responses.get(200, {}).get("content", {}):  # a HEAD never streams
            app.router.routes.append(
                APIRoute(
                    route.path,
                    route.endpoint,
                    methods=["HEAD"],
                    name=f"{route.name}_head",
                    include_in_schema=False,
                    response_class=route.response_class,
                )
            )
