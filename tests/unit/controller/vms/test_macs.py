"""The cross-VM MAC rule: the later VM on a segment with a used MAC is named and kept off."""

from __future__ import annotations

import pytest

from kubevisor.api import machines
from kubevisor.controller.vms import macs

pytestmark = pytest.mark.unit

MAC = "52:54:00:12:34:56"


def _vm(name: str, created: str, nics: list[dict[str, object]], ns: str = "ns") -> macs.Seen:
    return macs.seen(
        {
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "status": {"machine": {"memory": "1Gi", "nics": nics}},
        }
    )


OLD = _vm("old", "2026-01-01T00:00:00Z", [{"name": "eth0", "network": "default", "mac": MAC}])


@pytest.mark.parametrize(
    ("me", "expected"),
    [
        # same MAC, same segment, later: named
        (
            _vm("new", "2026-01-02T00:00:00Z", [{"name": "a", "network": "default", "mac": MAC}]),
            "VirtualMachine ns/old",
        ),
        # case does not make another address
        (
            _vm(
                "new",
                "2026-01-02T00:00:00Z",
                [{"name": "a", "network": "default", "mac": MAC.upper()}],
            ),
            "VirtualMachine ns/old",
        ),
        # another namespace shares the segment
        (
            _vm(
                "new",
                "2026-01-02T00:00:00Z",
                [{"name": "a", "network": "default", "mac": MAC}],
                ns="b",
            ),
            "VirtualMachine ns/old",
        ),
        # the earlier VM is never the one blamed
        (
            _vm(
                "a-first", "2025-12-31T00:00:00Z", [{"name": "a", "network": "default", "mac": MAC}]
            ),
            None,
        ),
        # another VLAN or network is another segment
        (
            _vm(
                "new",
                "2026-01-02T00:00:00Z",
                [{"name": "a", "network": "default", "vlan": 7, "mac": MAC}],
            ),
            None,
        ),
        (_vm("new", "2026-01-02T00:00:00Z", [{"name": "a", "network": "other", "mac": MAC}]), None),
        (_vm("new", "2026-01-02T00:00:00Z", [{"name": "a", "network": "default"}]), None),
    ],
)
def test_conflict(me: macs.Seen, expected: str | None) -> None:
    found = macs.conflict(me, [OLD, me])
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found and MAC in found and "default" in found


def test_same_timestamp_orders_by_name() -> None:
    twin = _vm("zz", "2026-01-01T00:00:00Z", [{"name": "a", "network": "default", "mac": MAC}])
    assert macs.conflict(twin, [OLD]) is not None
    assert macs.conflict(OLD, [twin]) is None


def test_ports_of_a_resolved_machine() -> None:
    m = machines.MachineSpec.model_validate(
        {
            "cpu": {"cores": 1},
            "memory": "1Gi",
            "nics": [{"name": "e", "network": "n", "vlan": 3, "mac": MAC.upper()}],
        }
    )
    assert macs.ports(m) == frozenset({("n", 3, MAC)})
    assert macs.ports(None) == frozenset()
