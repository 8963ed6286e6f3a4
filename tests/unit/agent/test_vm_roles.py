"""Which VMs an agent watches per role, and which segments its VMs need (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent import segments
from kubevisor.agent.vms import placing, watching

pytestmark = pytest.mark.unit

NETWORKS = {"default": "kvbr0", "red": "kvn-red"}


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (watching.Role.PLACED, "kubevisor.io/node=n1"),
        (watching.Role.INCOMING, "kubevisor.io/migration-target=n1"),
    ],
)
def test_selector_per_role(role: watching.Role, expected: str) -> None:
    assert watching.selector(role, "n1") == expected


def _vm(
    desired: str | None, phase: str | None, *nics: dict[str, Any], deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"deletionTimestamp": "2030-01-01T00:00:00Z"} if deleting else {}
    return {
        "metadata": meta,
        "status": {"desiredState": desired, "phase": phase, "machine": {"nics": list(nics)}},
    }


@pytest.mark.parametrize(
    ("vms", "needed"),
    [
        ([_vm("Running", None, {"network": "default", "vlan": 7})], {("default", 7)}),
        ([_vm("Stopped", "Stopping", {"network": "red"})], {("red", None)}),  # still going down
        ([_vm("Stopped", "Stopped", {"network": "red"})], set()),
        ([_vm("Running", "Running", {"network": "red"}, deleting=True)], set()),
        ([_vm("Running", None, {"network": "green"})], set()),  # not offered: nothing here
    ],
)
def test_needed_segments(vms: list[dict[str, Any]], needed: set[tuple[str, int | None]]) -> None:
    want = {segments.segment_of(n, v, NETWORKS, {"red"}) for n, v in needed}
    assert placing.needed_segments(vms, NETWORKS, managed=frozenset({"red"})) == want
