"""The browser page at ``/`` and the API docs (``/docs``, ``/redoc``), all served from this package.

Nothing here loads from another host: the page's scripts and styles are files under ``service/static/``
(plain ES modules, no build step), and Swagger UI / ReDoc come from the ``fastapi-offline`` package, which
vendors their bundles (FastAPI's own docs pages load them from a CDN, blank on an air-gapped host). Every HTML
answer carries a Content-Security-Policy that forbids other hosts, so a regression shows up as a blocked
request in the browser tests rather than as a silent dependency on the internet.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount, Route

from common.settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
STATIC_URL, DOCS_ASSETS_URL = "/static", "/docs-assets"
AUTH_PLACEHOLDER = 'data-auth="unknown"'

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def page_csp(storage_origin: str = "") -> str:
    """Same-origin only; the one exception is the deployment's own object store, where results live."""
    extra = f" {storage_origin}" if storage_origin else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' blob: data:{extra}; connect-src 'self'{extra}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


async def storage_origin(request: Request) -> str:
    """The origin of presigned result URLs (S3 backend: results redirect there), "" when there are none.

    Taken from a real presigned URL rather than rebuilt from settings (path- or host-style, public endpoint,
    region). Signing is local, but boto3 may first fetch credentials (blocking I/O): off the event loop.
    """
    state = request.app.state
    cached: str | None = getattr(state, "page_storage_origin", None)
    if cached is None:
        try:
            url = await run_in_threadpool(state.services.blobs.presigned_url, "results/page-probe", 60)
        except Exception:  # S3 misconfigured or down: the page still loads, results will say why
            log.warning("no presigned URL for the page's CSP; results from object storage will be blocked")
            return ""
        parts = urlsplit(url or "")
        cached = f"{parts.scheme}://{parts.netloc}" if url else ""
        state.page_storage_origin = cached
    return cached


# Swagger UI and ReDoc render their config as an inline script, and ReDoc search runs in a blob: worker.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# ReDoc's sidebar shows Redocly's logo from their CDN (an <img> that hides itself when it fails to load).
# The served bundle has that URL blanked so the docs never even try another host; the rest is untouched.
REDOC_BUNDLE = "redoc.standalone.js"
REDOC_REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def _redoc_bundle() -> bytes:
    source = (DOCS_ASSETS_DIR / REDOC_BUNDLE).read_text(encoding="utf-8")
    return source.replace(REDOC_REMOTE_LOGO, "").encode()


@cache
def _index_html(auth_enabled: bool) -> str:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return html.replace(AUTH_PLACEHOLDER, f'data-auth="{"on" if auth_enabled else "off"}"')


def install_page(app: FastAPI, settings: Settings) -> None:
    """Add ``/``, ``/static``, ``/docs`` and ``/redoc`` (create the app with ``docs_url=redoc_url=None``)."""
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    favicon = f"{DOCS_ASSETS_URL}/favicon.png"

    async def index(request: Request) -> HTMLResponse:
        html = _index_html(bool(settings.api_keys))
        csp = page_csp(await storage_origin(request))
        return HTMLResponse(html, headers={**_COMMON_HEADERS, "Content-Security-Policy": csp})

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{favicon}",
            # The default validator badge calls validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _with_headers(page, DOCS_CSP)

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return _with_headers(get_swagger_ui_oauth2_redirect_html(), DOCS_CSP)

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{favicon}",
            with_google_fonts=False,
        )
        return _with_headers(page, DOCS_CSP)

    async def redoc_bundle(request: Request) -> Response:
        return Response(
            _redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    app.router.routes.extend(
        [
            Route(f"{DOCS_ASSETS_URL}/{REDOC_BUNDLE}", redoc_bundle, include_in_schema=False),
            Route("/", index, methods=["GET"], include_in_schema=False),
            Route("/docs", swagger, methods=["GET"], include_in_schema=False),
            Route("/docs/oauth2-redirect", oauth2_redirect, methods=["GET"], include_in_schema=False),
            Route("/redoc", redoc, methods=["GET"], include_in_schema=False),
            Mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static"),
            Mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets"),
        ]
    )


def _with_headers(response: HTMLResponse, csp: str) -> HTMLResponse:
    response.headers.update({**_COMMON_HEADERS, "Content-Security-Policy": csp})
    return response
