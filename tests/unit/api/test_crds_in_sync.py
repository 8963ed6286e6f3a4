"""crds/ is generated from the models; this fails when someone forgets hack/gen-crds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubevisor.api import crdgen

CRDS = Path(__file__).resolve().parents[3] / "crds"

pytestmark = pytest.mark.unit


def test_crds_directory_matches_models() -> None:
    problems = crdgen.check(CRDS)
    assert not problems, "\n".join(problems) + "\nrun hack/gen-crds"


def test_rendering_is_deterministic_across_processes() -> None:
    """Rendered in fresh interpreters with different hash seeds: the same bytes (a
    per-process ordering would make hack/gen-crds churn and the check above flap)."""
    code = (
        "import json, sys\n"
        "from kubevisor.api import crdgen\n"
        "json.dump(crdgen.render_all(), sys.stdout)"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == crdgen.render_all()
