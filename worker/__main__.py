"""``python -m worker [extra celery worker args]``: one Celery worker process for one GPU.

Runs the solo pool with concurrency 1 on queue ``gpu`` (one process owns one model copy; scale out with more
processes/containers, each given its own GPU via CUDA_VISIBLE_DEVICES). Gossip and mingle are off: workers
do not need to know each other, and they slow down start-up and add broker traffic.
"""

from __future__ import annotations

import re
import sys

from common.logging_setup import configure_logging
from worker.config import get_worker_settings


def worker_argv(extra: list[str]) -> list[str]:
    settings = get_worker_settings()
    node = re.sub(r"[^A-Za-z0-9_.-]", "-", settings.worker_id)
    return [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={settings.queue_name}",
        f"--hostname=diffbir-{node}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        *extra,
    ]


def main(argv: list[str] | None = None) -> None:
    settings = get_worker_settings()
    configure_logging(settings, "worker", worker_id=settings.worker_id)
    from worker.celery_app import app

    app.worker_main(worker_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
