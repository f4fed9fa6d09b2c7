"""Metric names in PromQL (dashboard queries, alert and recording rules) checked against the code's metrics.

A renamed metric or label turns a panel silently empty and an alert silently blind; these helpers let the
dashboard and rule tests catch that the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.metrics import ApiMetrics
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
# Series Prometheus itself adds to every target; not ours to export.
PROMETHEUS_SERIES = {"up"}

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, for both processes (``le`` included for histogram buckets).

    prometheus_client only shows label names through samples, and a labelled metric has none until first
    used, so the label names are read from the collector the registry holds (a private but stable map).
    """
    series: dict[str, set[str]] = {}
    for registry in (ApiMetrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            collector = registry._names_to_collectors[family.name + _SUFFIXES[family.type][0]]
            labels = set(getattr(collector, "_labelnames", ()))
            for suffix in _SUFFIXES[family.type]:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def rules() -> list[dict[str, Any]]:
    """Every alerting and recording rule of deploy/prometheus/rules/*.yml."""
    found = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def recorded_series() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names used in its {...} matcher) for each metric selector in a PromQL expression:
    our own metrics (``diffbir_``), Prometheus's own series, and recorded ones (any name with a colon)."""
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\[[^\]]*\])?", expr):
        name, matcher = match.group(1), match.group(2) or ""
        if not (name.startswith("diffbir_") or name in PROMETHEUS_SERIES or ":" in name):
            continue
        found.append((name, set(re.findall(r"([a-zA-Z_]+)\s*[=!~]", matcher))))
    return found


def check_expr(expr: str, exported: dict[str, set[str]], recorded: set[str]) -> None:
    """Every series ``expr`` reads exists (exported, or recorded by a rule), with the labels it matches on
    and groups by."""
    used = selectors(expr)
    assert used, f"no metric in {expr!r}"
    label_pool: set[str] = set()
    for name, labels in used:
        if name in PROMETHEUS_SERIES:
            continue
        if ":" in name:
            assert name in recorded, f"{name} is recorded by no rule in {RULES_DIR}"
            continue
        assert name in exported, f"{name} is not exported by service/metrics.py or worker/metrics.py"
        assert labels <= exported[name], f"{name} has no label(s) {labels - exported[name]}"
        label_pool |= exported[name]
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        grouping = {g.strip() for g in group.split(",") if g.strip()}
        assert grouping <= label_pool | {"instance", "job"}, f"grouping by unknown label(s) in {expr!r}"
