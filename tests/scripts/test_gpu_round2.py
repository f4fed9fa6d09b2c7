"""The round-2 GPU script's bookkeeping (benchmarks/gpu_round2.py): the issue's table reads the figures the
legs really write (checked against the committed H200 run), and a leg that fails, is not selected or would
overrun the budget never costs the others their figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_round2  # noqa: E402

H200_RUN = ROOT / "benchmarks" / "results" / "gpu-h200-round2-2026-11-30.json"


def test_table_reads_the_h200_runs_figures() -> None:
    r2 = json.loads(H200_RUN.read_text())["round2"]
    rows = {row["figure"]: row for row in gpu_round2.issue_table(r2)}
    assert len(rows) == len(gpu_round2.TARGETS)
    assert (
        rows["50 steps, guidance + CFG, 512x512 (s)"]["measured"] == r2["optimised"]["spaced_guided_cfg"]["s"]
    )
    assert rows["real job 480x270 -> 1920x1080, 50 steps, guidance + CFG (s)"]["met"] is True
    assert rows["4096x4096 output, 50 steps (s)"]["met"] is False
    assert rows["4096x4096 output, peak memory (GB)"]["met"] is True
    # Every figure but the spawn-to-first-job time (added to the script after that run) was found.
    missing = [name for name, row in rows.items() if row["measured"] is None]
    assert missing == ["cold start, compile cache warm, spawn to first 512 job (s)"]


def test_cpu_smoke_table_claims_no_targets() -> None:
    r2 = json.loads(H200_RUN.read_text())["round2"]
    rows = gpu_round2.issue_table(r2, targets_apply=False)
    assert all(row["target"] is None and row["met"] is None for row in rows)


def _legs(budget_s: float = 1e9, only: list[str] | None = None) -> tuple[gpu_round2.Legs, dict, list[int]]:
    out: dict[str, Any] = {}
    saves: list[int] = []
    return gpu_round2.Legs(out, lambda: saves.append(len(out)), budget_s, only), out, saves


def test_a_failing_leg_records_its_error_and_the_next_still_runs() -> None:
    legs, out, saves = _legs()

    def broken() -> dict[str, Any]:
        raise RuntimeError("CUDA error: out of memory")

    assert legs.run("first", broken) is not None
    assert legs.run("second", lambda: {"s": 1.0}) == out["second"]
    assert "out of memory" in out["first"]["error"] and "traceback" in out["first"]
    assert out["second"]["s"] == 1.0 and saves == [1, 2]  # saved after each leg


def test_legs_past_the_budget_are_recorded_as_skipped() -> None:
    legs, out, _ = _legs(budget_s=0.0)
    ran: list[str] = []
    legs.run("late", lambda: ran.append("late") or {}, needs_s=60)
    assert not ran and "time budget" in out["late"]["skipped"]


@pytest.mark.parametrize(
    "only, expected", [(None, ["lever_a", "lever_b", "tiled_4096"]), (["lever_"], ["lever_a", "lever_b"])]
)
def test_leg_filter_runs_only_the_named_prefixes(only: list[str] | None, expected: list[str]) -> None:
    legs, out, _ = _legs(only=only)
    for name in ("lever_a", "lever_b", "tiled_4096"):
        legs.run(name, lambda: {})
    assert sorted(out) == expected
