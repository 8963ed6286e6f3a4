"""Table-driven tests of the node-side VRF plan: limits, backend, the plan, node refusals.

Spec validation, conflicts and tables are not decided here any more: the API model
(tests/unit/api) and the controller (test_controller_decisions.py) own them.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.vrfs import planning
from kubevisor.api import vrfs

pytestmark = pytest.mark.unit


def _bridge(network: str, vlan: int | None) -> str:
    return f"br-{network}" if vlan is None else f"br-{network}.{vlan}"


def _spec(raw: dict[str, Any]) -> vrfs.VRFSpec:
    return vrfs.VRFSpec.model_validate(raw)


RED = _spec(
    {
        "interfaces": [{"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]}],
        "routes": [
            {"prefix": "192.168.50.0/24", "via": "10.0.0.11"},
            {"prefix": "203.0.113.0/24", "type": "blackhole"},
        ],
        "resources": {"cpu": "250m", "memory": "64Mi"},
    }
)


@pytest.mark.parametrize(
    ("resources", "limits"),
    [
        (None, planning.Limits()),
        ({"cpu": "500m"}, planning.Limits(cpu_quota_us=50_000)),
        ({"cpu": "2"}, planning.Limits(cpu_quota_us=200_000)),
        ({"cpu": "0.25"}, planning.Limits(cpu_quota_us=25_000)),
        ({"cpu": "1m"}, planning.Limits(cpu_quota_us=1_000)),  # the kernel's minimum quota
        ({"cpu": "512"}, planning.Limits(cpu_quota_us=51_200_000)),
        ({"memory": "64Mi"}, planning.Limits(memory_bytes=64 << 20)),
        ({"memory": "1G"}, planning.Limits(memory_bytes=10**9)),
        ({"memory": "1e9"}, planning.Limits(memory_bytes=10**9)),
        ({"memory": "1.5Ki"}, planning.Limits(memory_bytes=1536)),
        ({"memory": "1.5"}, planning.Limits(memory_bytes=2)),  # rounded up, as Kubernetes
    ],
)
def test_limits_from_resources(resources: dict[str, str] | None, limits: planning.Limits) -> None:
    parsed = vrfs.VRFResources.model_validate(resources) if resources is not None else None
    assert planning.limits_from(parsed) == limits


@pytest.mark.parametrize(
    ("requested", "has_vrf", "expected"),
    [
        ("auto", True, "vrf"),
        ("auto", False, "netns"),
        ("netns", True, "netns"),
        ("vrf", True, "vrf"),
    ],
)
def test_choose_backend(requested: vrfs.Backend, has_vrf: bool, expected: str) -> None:
    assert planning.choose_backend(requested, kernel_has_vrf=has_vrf) == expected


def test_vrf_backend_refused_without_kernel_support() -> None:
    with pytest.raises(planning.SpecError) as caught:
        planning.choose_backend("vrf", kernel_has_vrf=False)
    assert caught.value.problem.reason == "BackendUnavailable"


def test_plan_red() -> None:
    desired = planning.plan("red", RED, table=1000, bridge_for=_bridge, kernel_has_vrf=False)
    assert desired.backend == "netns"
    assert desired.table == 1000
    (iface,) = desired.interfaces
    assert iface.bridge == "br-red"
    assert iface.addresses == ("10.0.0.1/24",)
    assert iface.mac == planning.interface_mac("red", "red0")
    assert iface.mac.startswith("02:")
    assert [r.prefix for r in desired.routes] == ["192.168.50.0/24", "203.0.113.0/24"]
    assert desired.routes[1].type == "blackhole"
    assert desired.limits == planning.Limits(cpu_quota_us=25_000, memory_bytes=64 << 20)


def test_anycast_mac_is_stable_and_distinct() -> None:
    assert planning.interface_mac("red", "r0") == planning.interface_mac("red", "r0")
    assert planning.interface_mac("red", "r0") != planning.interface_mac("blue", "r0")


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [(None, {}, True), ({"a": "1"}, {"a": "1", "b": "2"}, True), ({"a": "1"}, {"a": "2"}, False)],
)
def test_selects_node(
    selector: dict[str, str] | None, labels: dict[str, str], selected: bool
) -> None:
    assert vrfs.selects_node(selector, labels) is selected


def test_plan_node_uses_the_assigned_tables_and_refuses_only_node_limits() -> None:
    assigned = {
        "red": planning.Assigned(RED, 1005),
        "blue": planning.Assigned(_spec({"interfaces": [{"name": "b0", "network": "blue"}]}), 7),
        # the same segment as red: the controller would have refused this; the node
        # does not judge conflicts and plans what it is given
        "green": planning.Assigned(_spec({"interfaces": [{"name": "g0", "network": "red"}]}), 8),
        "wants-vrf": planning.Assigned(_spec({"backend": "vrf"}), 9),
        "tagged": planning.Assigned(
            _spec({"interfaces": [{"name": "t0", "network": "red", "vlan": 7}]}), 10
        ),
    }
    result = planning.plan_node(
        assigned, bridge_for=_bridge, kernel_has_vrf=False, kernel_has_8021q=False
    )
    assert {n: d.table for n, d in result.desired.items()} == {"red": 1005, "blue": 7, "green": 8}
    assert result.refused["wants-vrf"].reason == "BackendUnavailable"
    assert result.refused["tagged"].reason == "BackendUnavailable"
    assert "802.1Q not available in this kernel" in result.refused["tagged"].message
    ok = planning.plan_node({"tagged": assigned["tagged"]}, bridge_for=_bridge, kernel_has_vrf=True)
    assert ok.desired["tagged"].interfaces[0].bridge == "br-red.7"


@pytest.mark.parametrize(
    ("routing", "installed", "backend", "reason", "says"),
    [
        (None, frozenset(), "netns", None, ""),
        ({"daemon": "none"}, frozenset(), "netns", None, ""),
        (
            {"daemon": "bird", "config": "router id 10.0.0.1;"},
            frozenset({"bird"}),
            "netns",
            None,
            "",
        ),
        # a node without bird: DaemonUnavailable with a sentence saying so
        (
            {"daemon": "bird", "config": "router id 10.0.0.1;"},
            frozenset(),
            "netns",
            "DaemonUnavailable",
            "not installed on this node",
        ),
        # l3mdev: BIRD runs from the typed spec, bound to the VRF's device
        (
            {"daemon": "bird", "ospf": {"interfaces": ["red0"]}},
            frozenset({"bird"}),
            "vrf",
            None,
            "",
        ),
        # ... but not a config of its own: it could reach the node's own tables
        (
            {"daemon": "bird", "config": "router id 10.0.0.1;"},
            frozenset({"bird"}),
            "vrf",
            "DaemonUnavailable",
            "runs only the typed routing spec there",
        ),
        # l3mdev: FRR's zebras would share the node's namespace, so it is not run there
        (
            {"daemon": "frr", "config": "frr defaults traditional"},
            frozenset({"frr"}),
            "vrf",
            "DaemonUnavailable",
            "set backend: netns",
        ),
    ],
)
def test_a_daemon_the_agent_cannot_run_is_not_ready(
    routing: dict[str, Any] | None,
    installed: frozenset[str],
    backend: vrfs.RealBackend,
    reason: str | None,
    says: str,
) -> None:
    """Issue 9 item 6: routing.daemon bird reported Ready although no daemon ran."""
    raw: dict[str, Any] = {"interfaces": [{"name": "red0", "network": "red"}]}
    if routing is not None:
        raw["routing"] = routing
    problem = planning.daemon_problem(_spec(raw), installed=installed, backend=backend)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.reason == reason
        assert routing is not None and f"'{routing['daemon']}'" in problem.message
        assert "not applied" in problem.message
        assert says in problem.message
