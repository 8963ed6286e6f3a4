"""docs/reference.md and the reason table of docs/troubleshooting.md are generated from
the api models; this fails when someone changes a model and forgets hack/gen-docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.api import conditions, docgen, kinds

DOCS = Path(__file__).resolve().parents[3] / "docs"

pytestmark = pytest.mark.unit


def test_generated_docs_match_models() -> None:
    problems = docgen.check(DOCS)
    assert not problems, "\n".join(problems) + "\nrun hack/gen-docs"


def test_every_reason_of_every_reason_enum_is_in_troubleshooting() -> None:
    page = (DOCS / docgen.TROUBLESHOOTING).read_text()
    enums = docgen.reason_enums()
    assert conditions.Reason in enums and len(enums) >= 5
    missing = [
        f"{cls.__name__}.{m.value}" for cls in enums for m in cls if f"`{m.value}`" not in page
    ]
    assert not missing, f"not in docs/troubleshooting.md: {missing}; run hack/gen-docs"


def test_every_reason_is_documented_in_its_enum() -> None:
    undocumented = [f"{r.enum}.{r.value}" for r in docgen.reasons() if not r.doc]
    assert not undocumented, f"write a docstring under each member: {undocumented}"


def test_reference_has_every_kind_and_field() -> None:
    text = (DOCS / docgen.REFERENCE).read_text()
    for kind in kinds.KINDS:
        assert f"## {kind.kind}\n" in text
    assert "| `spec.runStrategy` |" in text
    assert "| `status.nodes.<key>.ready` |" in text  # a VRF's per-node entry


def test_hand_written_part_of_troubleshooting_is_kept() -> None:
    page = "# Troubleshooting\n\nprose\n\n" + docgen.BEGIN + "\nold\n" + docgen.END + "\n\nmore\n"
    out = docgen.troubleshooting(page)
    assert out.startswith("# Troubleshooting\n\nprose\n\n" + docgen.BEGIN)
    assert out.endswith(docgen.END + "\n\nmore\n") and "\nold\n" not in out
