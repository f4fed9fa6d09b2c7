"""Every series the Grafana dashboard queries is one the API or the worker actually exports, with the labels
the queries use: a renamed metric otherwise turns a panel silently empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service.metrics import ApiMetrics
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "diffbir.json"
# Series Prometheus itself adds to every target; not ours to export.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, for both processes (``le`` included for histogram buckets).

    prometheus_client only shows label names through samples, and a labelled metric has none until first
    used, so the label names are read from the collector the registry holds (a private but stable map).
    """
    series: dict[str, set[str]] = {}
    for registry in (ApiMetrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            labels = set(
                getattr(registry._names_to_collectors[family.name + _first(family.type)], "_labelnames", ())
            )
            for suffix in _SUFFIXES[family.type]:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def _first(kind: str) -> str:
    return _SUFFIXES[kind][0]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    return exprs


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names used in its {...} matcher) for each metric selector in a PromQL expression."""
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\[[^\]]*\])?", expr):
        name, matcher = match.group(1), match.group(2) or ""
        if not (name.startswith("diffbir_") or name in PROMETHEUS_SERIES):
            continue
        found.append((name, set(re.findall(r"([a-zA-Z_]+)\s*[=!~]", matcher))))
    return found


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_query_uses_exported_metrics_and_labels(expr: str):
    exported = exported_series()
    used = selectors(expr)
    assert used, f"no metric in {expr!r}"
    label_pool: set[str] = set()
    for name, labels in used:
        if name in PROMETHEUS_SERIES:
            continue
        assert name in exported, f"{name} is not exported by service/metrics.py or worker/metrics.py"
        assert labels <= exported[name], f"{name} has no label(s) {labels - exported[name]}"
        label_pool |= exported[name]
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        grouping = {g.strip() for g in group.split(",") if g.strip()}
        assert grouping <= label_pool | {"instance", "job"}, f"grouping by unknown label(s) in {expr!r}"


def test_dashboard_covers_the_operational_questions():
    text = "\n".join(dashboard_exprs())
    for metric in (
        "diffbir_queue_depth",
        "diffbir_worker_queue_wait_seconds_bucket",
        "diffbir_worker_job_duration_seconds_bucket",
        "diffbir_worker_sampler_duration_seconds_bucket",
        "diffbir_worker_sampler_step_duration_seconds_bucket",
        "diffbir_worker_jobs_total",
        "diffbir_worker_gpu_peak_memory_bytes_bucket",
    ):
        assert metric in text, f"dashboard lacks {metric}"


def test_a_misspelled_metric_would_be_caught():
    exported = exported_series()
    ((name, _),) = selectors('rate(diffbir_worker_job_duration_second_bucket{status="x"}[5m])')
    assert name not in exported


def test_grafana_datasource_matches_dashboard():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]} and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "diffbir.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
