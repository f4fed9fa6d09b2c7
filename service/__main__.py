"""``python -m service``: run the API under uvicorn with host/port from the settings."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from common.logging_setup import configure_logging
from common.settings import get_settings
from service.app import create_app


def app_factory() -> FastAPI:
    """One of several uvicorn worker processes: its own logging set-up (a spawned process inherits none)."""
    settings = get_settings()
    configure_logging(settings, "api")
    return create_app(settings)


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "api")
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "proxy_headers": True,
        "server_header": False,
    }
    if settings.log_format == "json":
        # uvicorn's own lines go through the root logger's JSON handler; the request middleware writes one
        # access line per request instead of uvicorn's plain one (service.observability).
        common.update(log_config=None, access_log=False)
    if settings.api_workers > 1:
        # Several processes need an import string; each builds its app from the same environment.
        uvicorn.run("service.__main__:app_factory", factory=True, workers=settings.api_workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


if __name__ == "__main__":
    main()
