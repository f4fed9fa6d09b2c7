"""README.md stays true to the code: the settings table, the metrics list, the weights list, the links, and
the two commands of its first screen."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from model.weights import version_files
from service.metrics import ApiMetrics
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_screen_gives_exactly_the_two_commands():
    first_screen = README.split("\n---\n")[0]
    blocks = re.findall(r"```sh\n(.*?)```", first_screen, flags=re.S)
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (ROOT / "scripts" / "demo.sh").exists() and (ROOT / "scripts" / "test.sh").exists()


def test_settings_table_is_generated_from_the_settings_classes():
    module = settings_table()
    assert module.render(README) == README, "stale table: run python scripts/settings_table.py --write"
    documented = set(re.findall(r"^\| `(DIFFBIR_[A-Z0-9_]+)` \|", README, flags=re.M))
    fields = {f"DIFFBIR_{name.upper()}" for name in module.WorkerSettings.model_fields}
    assert documented == fields


def test_every_setting_has_a_meaning():
    assert settings_table().undocumented() == [], "add description= to the Field (or a line in MEANINGS)"


def test_metrics_list_matches_the_exported_metrics():
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for registry in (ApiMetrics().registry, WorkerMetrics().registry)
        for family in registry.collect()
    }
    section = README.split("## Metrics")[1].split("\n## ")[0]
    listed = set(re.findall(r"^\| `(diffbir_[a-z0-9_]+)` \|", section, flags=re.M))
    assert listed == exported


def test_weights_table_matches_the_registry():
    section = README.split("## Weights")[1].split("\n## ")[0]
    for version in ("v1", "v2", "v2.1"):
        row = re.search(rf"^\| `{re.escape(version)}`[^|]*\|(.*)\|$", section, flags=re.M)
        assert row, version
        listed = set(re.findall(r"`([^`]+\.(?:ckpt|pth|pt))`", row.group(1)))
        assert listed == {w.filename for w in version_files(version)}, version


def test_relative_links_resolve():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), f"README links to missing {target}"
