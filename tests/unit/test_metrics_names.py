"""The metric names the dashboard queries and docs/observability.md lists are the ones
the code defines (controller, agent and gateway metrics modules), so a renamed metric
fails here instead of leaving an empty panel or a stale page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kubevisor.agent import metrics as agent_metrics
from kubevisor.controller import metrics as controller_metrics
from kubevisor.gateway import metrics as gateway_metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "kubevisor" / "dashboards" / "kubevisor.json"
DOC = ROOT / "docs" / "observability.md"
NAME = re.compile(r"\bkubevisor_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _families() -> dict[str, str]:
    """name as documented (a counter with _total) -> type, of every kubevisor family."""
    assert agent_metrics and controller_metrics and gateway_metrics  # registered on import
    out = {}
    for family in REGISTRY.collect():
        if family.name.startswith("kubevisor_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = family.type
    return out


def _exposed() -> set[str]:
    """Every sample name a scrape can show."""
    names = set()
    for name, type_ in _families().items():
        base = name.removesuffix("_total")
        names |= {base + suffix for suffix in SUFFIXES[type_]}
    return names


def test_every_side_defines_its_metrics() -> None:
    prefixes = {name.split("_")[1] for name in _families()}
    assert prefixes == {"controller", "agent", "gateway"}


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used, "the dashboard queries no kubevisor metric"
    assert used <= _exposed(), f"unknown metrics: {sorted(used - _exposed())}"


def test_the_observability_page_lists_every_metric_with_its_type() -> None:
    rows = re.findall(r"^\| `(kubevisor_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M)
    assert dict(rows) == _families()
