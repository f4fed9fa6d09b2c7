"""torch.compile with a dynamic batch axis and compile artifacts saved by one process, loaded by the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.acceleration import Acceleration, Accelerator, DynamicBatch, load_compile_cache
from model.cldm import ControlLDM

ROOT = Path(__file__).resolve().parents[2]


def test_missing_or_foreign_cache_file_compiles_from_scratch(tmp_path: Path) -> None:
    assert load_compile_cache(tmp_path / "absent.bin") is False
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a torch compile cache")
    assert load_compile_cache(junk) is False


def test_cache_off_saves_nothing(tiny_cldm: ControlLDM, tmp_path: Path) -> None:
    accel = Accelerator(
        {"sr": tiny_cldm}, {}, torch.device("cpu"), Acceleration(compile_cache=str(tmp_path / "c"))
    )
    assert accel.save_compile_cache() == 0  # compile is off
    assert not (tmp_path / "c").exists()


def test_dynamic_batch_marks_the_batch_axis_of_every_tensor_input() -> None:
    seen: list[set[int]] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, extra: tuple[torch.Tensor, ...]) -> torch.Tensor:
            seen.extend(getattr(v, "_dynamo_dynamic_indices", set()) for v in (x, t, *extra))
            return x

    probe = Probe()
    wrapped = DynamicBatch(probe)
    x, t, r = torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 2)
    assert wrapped(x, t, extra=(r,)) is x
    assert seen == [{0}, {0}, {0}]
    seen.clear()
    wrapped(torch.zeros(1, 4), torch.zeros(1), extra=(torch.zeros(1, 2),))
    assert seen == [set(), set(), set()]  # batch 1 is specialised by dynamo anyway: left unmarked


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_second_process_loads_artifacts_and_gives_identical_output(tmp_path: Path) -> None:
    """benchmarks/compile_cache.py: process 1 compiles the tiny UNet+ControlNet (batches 2, 3, 4, 1) and
    saves the artifacts; process 2, with another EMPTY inductor cache dir, loads them: it compiles nothing
    (every inductor graph is a cache hit), one compilation serves batches 2-4, and the outputs are equal."""
    out = tmp_path / "cc.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compile_cache.py"),
            "--config",
            "tiny",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    cold, warm = result["cold"], result["warm_cache"]
    assert result["outputs_identical"]
    assert cold["saved_bytes"] > 0 and not cold["cache_loaded"]
    assert cold["fxgraph_cache_miss"] > 0
    assert warm["cache_loaded"]
    assert warm["fxgraph_cache_miss"] == 0 and warm["fxgraph_cache_hit"] > 0
    for run in (cold, warm):
        graphs = run["unique_graphs_after_batch"]
        assert graphs["2"] == graphs["3"] == graphs["4"]  # batches 2-4 share one compilation
