"""Fault points: test-only crash sites at the named steps of a job's lifecycle.

``DIFFBIR_FAULT_POINT=<name>`` makes the process SIGKILL itself (no cleanup, no atexit: a power cut) the
first time it reaches that step; with ``DIFFBIR_FAULT_ONCE_FILE=<path>`` only the first process to get
there dies (the file is created atomically just before), so the restarted process, started with the same
environment like an orchestrator would, runs on. Unset (production), ``fault_point`` is one comparison
with None. The fault tests (tests/e2e/test_fault_points_e2e.py) prove a job survives a crash at each point.

Points, in lifecycle order: API ``after_store`` (job + outbox written, not published), ``after_publish``
(published, client not answered); worker ``after_claim``, ``mid_sampling``, ``after_result_stored`` (result
blob written, status not), ``after_status_written`` (succeeded, message not acked), ``during_webhook``.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = (
    "after_store",
    "after_publish",
    "after_claim",
    "mid_sampling",
    "after_result_stored",
    "after_status_written",
    "during_webhook",
)

_ARMED = os.environ.get("DIFFBIR_FAULT_POINT") or None
_ONCE_FILE = os.environ.get("DIFFBIR_FAULT_ONCE_FILE") or None
if _ARMED is not None and _ARMED not in POINTS:
    raise ValueError(f"DIFFBIR_FAULT_POINT={_ARMED!r} is not one of {', '.join(POINTS)}")


def fault_point(name: str) -> None:
    """Die here if this is the armed fault point (tests only; nothing happens when none is armed)."""
    if _ARMED is not None and name == _ARMED:
        _fire(name)


def _fire(name: str) -> None:
    if _ONCE_FILE is not None:
        try:
            os.close(os.open(_ONCE_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # an earlier process died here already
    print(f"FAULT POINT {name}: killing process {os.getpid()}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
