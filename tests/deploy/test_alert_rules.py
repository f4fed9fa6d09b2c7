"""The Prometheus alert and recording rules: promtool checks them and runs their unit tests, every alert has
a firing and a quiet case and a runbook, and every series they read is one the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import ROOT, RULES_DIR, check_expr, exported_series, recorded_series, rules
from worker.metrics import WorkerMetrics

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is required (scripts/setup.sh installs it: apt-get install prometheus)"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def rule_test_cases() -> list[dict]:
    """Every alert_rule_test entry of the promtool unit-test files."""
    return [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no promtool unit tests"
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_files_pass_promtool_check():
    files = sorted(RULES_DIR.glob("*.yml"))
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files) >= 2


def test_config_loads_every_rule_file():
    config = yaml.safe_load(CONFIG.read_text())
    loaded = {p for pattern in config["rule_files"] for p in CONFIG.parent.glob(pattern)}
    assert loaded == set(RULES_DIR.glob("*.yml"))
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(loaded)} rule files found" in result.stdout


def test_compose_mounts_the_rules_where_the_config_looks_for_them():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    mounts = dict(volume.split(":")[:2] for volume in compose["volumes"] if volume.startswith("./"))
    config_in_container = Path(mounts["./deploy/prometheus/prometheus.yml"])
    assert f"--config.file={config_in_container}" in compose["command"]
    assert Path(mounts["./deploy/prometheus/rules"]) == config_in_container.parent / "rules"


def test_a_broken_rule_fails_its_unit_tests(tmp_path: Path):
    """promtool really evaluates the rules: a threshold raised tenfold loses a firing case."""
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules")
    shutil.copytree(PROMETHEUS_DIR / "tests", tmp_path / "tests")
    path = tmp_path / "rules" / "alerts.yml"
    text = path.read_text()
    assert text.count("[15m])) > 0.1") == 1
    path.write_text(text.replace("[15m])) > 0.1", "[15m])) > 1.0"))
    result = promtool("test", "rules", tmp_path / "tests" / "alerts_test.yml")
    assert result.returncode != 0
    assert "alertname: DiffBIRWebhookFailures" in result.stdout + result.stderr


def test_a_broken_rule_file_fails_the_config_check(tmp_path: Path):
    shutil.copy(CONFIG, tmp_path / "prometheus.yml")
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules")
    path = tmp_path / "rules" / "alerts.yml"
    text = path.read_text()
    assert text.count("expr: max(diffbir_queue_depth)\n") == 1
    path.write_text(text.replace("expr: max(diffbir_queue_depth)\n", "expr: max(diffbir_queue_depth\n"))
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode != 0


def test_every_alert_has_a_firing_and_a_quiet_case():
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)) >= 16
    cases = rule_test_cases()
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(names) - firing == set(), "alerts without a case where they fire"
    assert set(names) - quiet == set(), "alerts without a case where they must stay quiet"
    # A test of a misspelled alert passes when it expects silence: every name tested must exist.
    assert {c["alertname"] for c in cases} <= set(names)


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_and_a_runbook(alert: dict):
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "docs/operations.md"
    assert anchor == alert["alert"].lower() and anchor in github_anchors(RUNBOOK.read_text())
    section = RUNBOOK.read_text().split(f"### {alert['alert']}\n")[1].split("\n### ")[0]
    for part in ("**Means:**", "**First checks:**", "**Fixes:**"):
        assert part in section, f"runbook of {alert['alert']} lacks {part}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rule_reads_exported_or_recorded_series(rule: dict):
    check_expr(rule["expr"], exported_series(), recorded_series())


def test_slo_deadline_is_a_turnaround_bucket():
    """The job SLI counts on-time jobs from one bucket: the deadline must be one of its bounds."""
    text = (RULES_DIR / "slo.yml").read_text()
    deadlines = set(re.findall(r'diffbir_worker_job_turnaround_seconds_bucket\{le=~"(\d+)\(', text))
    assert len(deadlines) == 1
    bounds = WorkerMetrics().turnaround._upper_bounds  # prometheus_client keeps them only there
    assert float(deadlines.pop()) in bounds


def test_runbook_states_every_objective_the_burn_alerts_use():
    """The error budgets in the burn-rate expressions are the objectives docs/operations.md states."""
    doc = RUNBOOK.read_text()
    for alert in alerts():
        if "SLOBurn" not in alert["alert"]:
            continue
        budgets = set(re.findall(r"\* (0\.0+1)\)", alert["expr"]))
        assert len(budgets) == 1, alert["alert"]
        objective = f"{(1 - float(budgets.pop())) * 100:g} %"
        assert f"| {objective} |" in doc, f"{alert['alert']}: objective {objective} not in the SLO table"
