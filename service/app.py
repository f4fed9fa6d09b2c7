"""``create_app(settings)``: the FastAPI application factory (clients are built in the lifespan)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from common.settings import Settings, get_settings
from service import discovery, events, job_list
from service.app_state import Services
from service.metrics import ApiMetrics, MetricsMiddleware
from service.observability import install_observability
from service.page import install_page
from service.problems import install_problem_handlers
from service.routes import api, ops

log = logging.getLogger(__name__)

DESCRIPTION = """
Asynchronous blind image restoration with DiffBIR.

Submit an image with `POST /v1/restore`, poll `GET /v1/jobs/{id}` (or follow `GET /v1/jobs/{id}/events`),
fetch `GET /v1/jobs/{id}/result`; `GET /v1/jobs` lists your jobs.
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
    _document_bearer_auth(app, enabled=bool(settings.api_keys))
    return app


def _document_bearer_auth(app: FastAPI, enabled: bool) -> None:
    """Declare the bearer scheme in OpenAPI (auth is checked inline in the routes, not as a dependency)."""
    if not enabled:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"}
            }
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
