"""scripts/refresh_reference.py: brings new and changed fixtures in, says what changed, prunes on request;
and the in-repo copy the tests read is complete."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def refresh() -> ModuleType:
    path = ROOT / "scripts" / "refresh_reference.py"
    spec = importlib.util.spec_from_file_location("refresh_reference", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_copies_new_and_changed_files_and_reports_them(
    refresh: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, dest = tmp_path / "shared", tmp_path / "repo"
    _write(source, {"README.md": b"spec", "tiny/a.json": b"1", "tiny/b.safetensors": b"new", "x.txt": b"x"})
    _write(dest, {"README.md": b"spec", "tiny/a.json": b"0", "tiny/gone.json": b"old"})
    assert refresh.main([str(source), "--dest", str(dest), "--check"]) == 1
    assert (dest / "tiny" / "a.json").read_bytes() == b"0"  # --check changes nothing
    capsys.readouterr()
    assert refresh.main([str(source), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "new  tiny/b.safetensors" in out and "changed  tiny/a.json" in out
    assert "only here  tiny/gone.json" in out and "1 unchanged" in out
    assert (dest / "tiny" / "a.json").read_bytes() == b"1"
    assert (dest / "tiny" / "b.safetensors").read_bytes() == b"new"
    assert not (dest / "x.txt").exists()  # only the fixture parts are mirrored
    assert (dest / "tiny" / "gone.json").exists()  # kept without --prune
    assert refresh.main([str(source), "--dest", str(dest), "--prune"]) == 0
    assert not (dest / "tiny" / "gone.json").exists()
    assert refresh.main([str(source), "--dest", str(dest), "--check"]) == 0


def test_refuses_a_directory_that_is_not_a_reference(refresh: ModuleType, tmp_path: Path) -> None:
    assert refresh.main([str(tmp_path), "--dest", str(tmp_path / "repo")]) == 2


def test_the_repo_holds_every_fixture_and_its_sidecar() -> None:
    """The tests read `tests/reference/` (no shared directory needed); each tensor file has its json spec."""
    reference = ROOT / "tests" / "reference"
    assert (reference / "README.md").is_file() and (reference / "tiny" / "tiny_configs.json").is_file()
    tensors = sorted(p.stem for p in (reference / "tiny").glob("*.safetensors"))
    assert {"edm_sampler_runs", "upstream_ddim_dpms_runs", "tilevae", "pipeline_stage2"} <= set(tensors)
    assert all((reference / "tiny" / f"{name}.json").is_file() for name in tensors)
    assert (reference / "manifests" / "sd21_ldm.json").is_file()
