"""Every series the Grafana dashboard queries is one the API or the worker actually exports (or a rule
records), with the labels the queries use: a renamed metric otherwise turns a panel silently empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import check_expr, exported_series, recorded_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "diffbir.json"


def panels() -> list[dict]:
    """Every panel but row headers (which query nothing)."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for panel in panels() for t in panel["targets"]]
    assert len(exprs) >= 10
    return exprs


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_query_uses_exported_metrics_and_labels(expr: str):
    check_expr(expr, exported_series(), recorded_series())


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
        "diffbir_worker_job_turnaround_seconds_bucket",
        "slo:diffbir_jobs:error_ratio_rate30d",
        "slo:diffbir_api:error_ratio_rate30d",
        "slo:diffbir_jobs:error_ratio_rate1h",
        "slo:diffbir_api:error_ratio_rate1h",
    ):
        assert metric in text, f"dashboard lacks {metric}"


def test_slo_row_follows_the_other_panels():
    """A Grafana row owns the panels below it: the SLO panels must sit under its header, below all others."""
    raw = json.loads(DASHBOARD.read_text())["panels"]
    (row,) = [p for p in raw if p["type"] == "row"]
    below = [p for p in raw if p["gridPos"]["y"] > row["gridPos"]["y"]]
    above = [p for p in raw if p["gridPos"]["y"] < row["gridPos"]["y"]]
    assert len(below) + len(above) + 1 == len(raw)
    exprs = [t["expr"] for p in below for t in p["targets"]]
    assert exprs and all("slo:" in e or "turnaround" in e for e in exprs)


@pytest.mark.parametrize(
    "expr",
    [
        'rate(diffbir_worker_job_duration_second_bucket{status="x"}[5m])',  # misspelled metric
        'rate(diffbir_worker_jobs_total{outcome="x"}[5m])',  # label of another metric
        "1 - slo:diffbir_jobs:error_ratio_rate7d",  # recorded by no rule
    ],
)
def test_a_wrong_name_would_be_caught(expr: str):
    with pytest.raises(AssertionError):
        check_expr(expr, exported_series(), recorded_series())


def test_grafana_datasource_matches_dashboard():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    uids = {p["datasource"]["uid"] for p in panels()}
    assert uids == {source["uid"]} and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "diffbir.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
