"""The Helm chart ships its own copy of the CRDs (Helm installs charts/kubevisor/crds/
before the templates); this fails when that copy drifts from crds/, and when a kind is
added without giving the controller's ClusterRole access to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.api import kinds

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART = ROOT / "charts" / "kubevisor"

pytestmark = pytest.mark.unit


def _yaml_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def test_chart_crds_match_repo_crds() -> None:
    repo, chart = _yaml_files(CRDS), _yaml_files(CHART / "crds")
    assert repo, f"no CRDs found in {CRDS}"
    fix = "\nfix: rm charts/kubevisor/crds/*.yaml && cp crds/*.yaml charts/kubevisor/crds/"
    assert sorted(chart) == sorted(repo), f"files differ: {sorted(chart)} vs {sorted(repo)}{fix}"
    stale = [name for name in repo if chart[name] != repo[name]]
    assert not stale, f"charts/kubevisor/crds differ from crds/: {stale}{fix}"


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_controller_role_names_every_kind(kind: kinds.Kind) -> None:
    rules = (CHART / "templates" / "rbac-controller.yaml").read_text()
    assert kind.plural in rules, f"controller ClusterRole lacks {kind.plural}"
    assert f"{kind.plural}/status" in rules, f"controller ClusterRole lacks {kind.plural}/status"
