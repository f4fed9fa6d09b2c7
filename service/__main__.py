"""``python -m service``: run the API under uvicorn with host/port from the settings."""

from __future__ import annotations

import logging

import uvicorn

from common.settings import get_settings
from service.app import create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    common = {"host": settings.host, "port": settings.port, "proxy_headers": True, "server_header": False}
    if settings.api_workers > 1:
        # Several processes need an import string; each builds its app from the same environment.
        uvicorn.run("service.app:create_app", factory=True, workers=settings.api_workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


if __name__ == "__main__":
    main()
