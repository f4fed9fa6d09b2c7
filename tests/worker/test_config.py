"""Worker-only settings (worker.config): their consistency checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import WorkerSettings


def test_hard_time_limit_must_exceed_the_soft_one() -> None:
    with pytest.raises(ValidationError, match="hard_time_limit"):
        WorkerSettings(task_soft_time_limit_s=100, task_hard_time_limit_s=100)


def test_visibility_timeout_must_exceed_the_hard_limit() -> None:
    with pytest.raises(ValidationError, match="visibility"):
        WorkerSettings(broker_visibility_timeout_s=100, task_soft_time_limit_s=50, task_hard_time_limit_s=200)
