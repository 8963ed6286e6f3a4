"""The README says which kinds act and which answer NotImplemented; it must match the
controller's registry, so a kind that lands (or a promise that outruns the code) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubevisor.controller import registry

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def _named(sentence: str) -> set[str]:
    return set(re.findall(r"`([A-Z][A-Za-z]+)`", sentence))


def test_readme_names_acting_and_not_implemented_kinds_as_the_registry_does() -> None:
    text = " ".join(README.read_text().split())
    acting = re.search(r"What acts today: (.*?)\.", text)
    assert acting, "README lost its 'What acts today' paragraph"
    assert _named(acting.group(1)) == set(registry.IMPLEMENTED)
    waiting = {k.kind for k in registry.not_implemented_kinds()}
    idle = re.search(r"What acts today: .*?\. (.*?) do nothing yet", text)
    if waiting:
        assert idle, "README does not say which kinds do nothing yet"
        assert _named(idle.group(1)) == waiting
    else:
        assert idle is None and "none answers `NotImplemented`" in text
