"""Loading the model from worker settings (worker.loading), and torch staying inside that one module."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.conftest import worker_settings
from worker import loading

ROOT = Path(__file__).resolve().parents[2]


def test_warm_up_runs_a_cfg_and_a_no_cfg_restore_before_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.pipeline import DiffBIRPipeline

    calls: list[tuple[int, int, float]] = []
    real_restore = DiffBIRPipeline.restore

    def spy(self: DiffBIRPipeline, image, options=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((*image.shape[:2], options.cfg_scale))
        return real_restore(self, image, options, *args, **kwargs)

    monkeypatch.setattr(DiffBIRPipeline, "restore", spy)
    pipeline, _ = loading.load_pipeline(worker_settings("redis://unused", worker_warmup=True))
    # Both denoiser batch shapes a 512 px job can need: with CFG (the default) and without.
    assert calls == [(128, 128, 4.0), (128, 128, 1.0)]
    # The API's output limit, so a job the API accepted is not refused by the model later.
    assert pipeline.max_pixels == 4096 * 4096
    calls.clear()
    loading.load_pipeline(worker_settings("redis://unused"))
    assert calls == []


def test_only_the_loading_module_imports_torch_or_the_pipeline() -> None:
    """The worker reaches torch through ``worker.loading`` only (OOM is the model's own error type)."""
    importers = {
        path.name
        for path in (ROOT / "worker").glob("*.py")
        for name in _runtime_imports(ast.parse(path.read_text()))
        if name == "torch" or name.startswith("torch.") or name == "model.pipeline"
    }
    assert importers == {"loading.py"}


def _runtime_imports(tree: ast.Module) -> Iterator[str]:
    """Modules a file imports when it runs (those under ``if TYPE_CHECKING:`` are for type checkers only)."""
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_compile_sizes_setting_reaches_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.pipeline import DiffBIRPipeline

    seen: dict[str, object] = {}

    def fake_from_preset(**kwargs: object) -> object:
        seen.update(kwargs)
        return object()

    monkeypatch.setattr(DiffBIRPipeline, "from_preset", staticmethod(fake_from_preset))
    loading.load_pipeline(worker_settings("redis://unused", worker_compile_sizes=["512x512", "768x1024"]))
    acceleration = seen["acceleration"]
    assert acceleration.compile_sizes == {(512, 512), (768, 1024)}  # type: ignore[attr-defined]
    assert acceleration.cuda_graphs is None  # type: ignore[attr-defined]  # on exactly when the device is CUDA
    loading.load_pipeline(
        worker_settings("redis://unused", worker_compile_sizes=["all"], worker_cuda_graphs=False)
    )
    acceleration = seen["acceleration"]
    assert acceleration.compile_sizes is None and acceleration.cuda_graphs is False  # type: ignore[attr-defined]


def test_compile_cache_settings_reach_the_pipeline_and_warm_up_saves_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A new replica: the artifacts file and the inductor dir go to the pipeline before anything compiles,
    and the artifacts are written after the warm-up (so the next replica skips the compilations)."""
    from model.pipeline import DiffBIRPipeline

    seen: dict[str, object] = {}
    events: list[str] = []

    class FakePipeline:
        class accel:  # stands in for the Accelerator attribute
            @staticmethod
            def save_compile_cache() -> int:
                events.append("save")
                return 1

        def restore(self, image: object, options: object) -> None:
            events.append("restore")

    def fake_from_preset(**kwargs: object) -> object:
        seen.update(kwargs)
        events.append("build")
        return FakePipeline()

    monkeypatch.setattr(DiffBIRPipeline, "from_preset", staticmethod(fake_from_preset))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unchanged")  # restored after the test
    cache = tmp_path / "artifacts.bin"
    loading.load_pipeline(
        worker_settings(
            "redis://unused",
            worker_compile=True,
            worker_compile_cache=str(cache),
            worker_inductor_cache_dir=str(tmp_path / "inductor"),
            worker_compile_dynamic_batch=False,
        )
    )
    acceleration = seen["acceleration"]
    assert acceleration.compile_cache == str(cache)  # type: ignore[attr-defined]
    assert acceleration.compile_dynamic_batch is False  # type: ignore[attr-defined]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert events == ["build", "restore", "restore", "save"]
    events.clear()
    loading.load_pipeline(worker_settings("redis://unused", worker_compile=True))
    assert seen["acceleration"].compile_cache is None  # type: ignore[attr-defined]
    assert events == ["build", "restore", "restore"]  # no file named: nothing saved
