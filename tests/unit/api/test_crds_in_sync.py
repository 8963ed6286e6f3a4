"""crds/ is generated from the models; this fails when someone forgets hack/gen-crds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.api import crdgen

CRDS = Path(__file__).resolve().parents[3] / "crds"

pytestmark = pytest.mark.unit


def test_crds_directory_matches_models() -> None:
    problems = crdgen.check(CRDS)
    assert not problems, "\n".join(problems) + "\nrun hack/gen-crds"


def test_rendering_is_deterministic() -> None:
    assert crdgen.render_all() == crdgen.render_all()
