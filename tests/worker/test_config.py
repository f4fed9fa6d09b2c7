"""Worker-only settings (worker.config): their consistency checks, refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.worker.conftest import worker_settings
from worker.config import WorkerSettings


def test_hard_time_limit_must_exceed_the_soft_one() -> None:
    with pytest.raises(ValidationError, match="hard_time_limit"):
        WorkerSettings(task_soft_time_limit_s=100, task_hard_time_limit_s=100)


def test_visibility_timeout_must_exceed_the_hard_limit() -> None:
    with pytest.raises(ValidationError, match="visibility"):
        WorkerSettings(broker_visibility_timeout_s=100, task_soft_time_limit_s=50, task_hard_time_limit_s=200)


@pytest.mark.parametrize("bad", [["512"], ["512x500"], ["0x512"], ["axb"]])
def test_bad_compile_sizes_are_refused_at_start(bad: list[str]) -> None:
    with pytest.raises(ValidationError, match="compile size"):
        worker_settings("redis://unused", worker_compile_sizes=bad)
