"""The chaos run (benchmarks/chaos.py, ``make chaos``), bounded for CI: jobs through a real stack under
random kill -9 of workers and the API and a kill -9 + restart of Redis (AOF); every job must succeed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _chaos_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_run_every_job_succeeds(tmp_path: Path) -> None:
    chaos = _chaos_module()
    cfg = chaos.Config(
        jobs=12,
        workers=2,
        steps=4,
        worker_kills=2,
        api_kills=1,
        redis_restarts=1,
        fault_gap_s=(2.0, 5.0),
        timeout_s=600.0,
        log_dir=tmp_path,
    )
    result = chaos.run_chaos(cfg)
    print(f"{result['passed']} passed, {result['failed']} failed", result["kill_to_reclaim_s"])
    assert result["faults"] == {"worker": 2, "api": 1, "redis": 1}
    assert result["failed"] == 0, result["failures"]
    assert result["passed"] == cfg.jobs
