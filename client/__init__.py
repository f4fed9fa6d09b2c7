"""Python client for the DiffBIR restoration API (sync + asyncio) and the ``restore-client`` CLI.

from client import RestoreClient
with RestoreClient("http://localhost:8000", api_key="...") as c:
    png = c.restore("photo.jpg", task="sr", upscale=4, fidelity=0.7, steps=50)
"""

from __future__ import annotations

from client.client import AsyncRestoreClient, RestoreClient
from client.errors import APIError, JobFailedError, RestoreClientError, WaitTimeoutError
from client.jobs import Job, PollSchedule, Progress

__all__ = [
    "APIError",
    "AsyncRestoreClient",
    "Job",
    "JobFailedError",
    "PollSchedule",
    "Progress",
    "RestoreClient",
    "RestoreClientError",
    "WaitTimeoutError",
]
