"""Table-driven tests of VRF planning: validation, conflicts, table allocation, plan."""

from __future__ import annotations

import pytest

from kubevisor.agent.vrfs import planning, specs

pytestmark = pytest.mark.unit


def _bridge(network: str, vlan: int | None) -> str:
    return f"br-{network}" if vlan is None else f"br-{network}.{vlan}"


RED: specs.VRFSpec = {
    "interfaces": [{"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]}],
    "routes": [
        {"prefix": "192.168.50.0/24", "via": "10.0.0.11"},
        {"prefix": "203.0.113.0/24", "type": "blackhole"},
    ],
    "resources": {"cpu": "250m", "memory": "64Mi"},
}


@pytest.mark.parametrize(
    ("spec", "reason", "fragment"),
    [
        ({"table": 254}, "InvalidSpec", "reserved"),
        ({"interfaces": [{"name": "x" * 16, "network": "n"}]}, "InvalidSpec", "1..15"),
        ({"interfaces": [{"name": "a"}]}, "InvalidSpec", "exactly one"),
        (
            {"interfaces": [{"name": "a", "network": "n", "hostInterface": "eth1"}]},
            "InvalidSpec",
            "exactly one",
        ),
        ({"interfaces": [{"name": "a", "network": "n", "vlan": 5000}]}, "InvalidSpec", "vlan"),
        (
            {"interfaces": [{"name": "a", "network": "n", "addresses": ["10.0.0.1"]}]},
            "InvalidSpec",
            "prefix length",
        ),
        ({"routes": [{"prefix": "10.0.0.1/24", "via": "10.0.0.2"}]}, "InvalidSpec", "host bits"),
        ({"routes": [{"prefix": "10.1.0.0/24"}]}, "InvalidSpec", "via or device"),
        (
            {"routes": [{"prefix": "10.1.0.0/24", "type": "blackhole", "via": "10.0.0.1"}]},
            "InvalidSpec",
            "takes no via",
        ),
        ({"routes": [{"prefix": "10.1.0.0/24", "via": "fe80::1"}]}, "InvalidSpec", "family"),
        ({"routes": [{"prefix": "10.1.0.0/24", "device": "nope"}]}, "InvalidSpec", "nope"),
        ({"resources": {"cpu": "lots"}}, "InvalidSpec", "CPU quantity"),
        ({"resources": {"memory": "12XB"}}, "InvalidSpec", "memory quantity"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(
    spec: specs.VRFSpec, reason: str, fragment: str
) -> None:
    problem = planning.validate("v", spec)
    assert problem is not None
    assert problem.reason == reason
    assert fragment in problem.message


def test_a_good_spec_validates() -> None:
    assert planning.validate("red", RED) is None


@pytest.mark.parametrize(
    ("quantity", "cores"), [("500m", 0.5), ("2", 2.0), ("0.25", 0.25), ("1500m", 1.5)]
)
def test_parse_cpu(quantity: str, cores: float) -> None:
    assert planning.parse_cpu(quantity) == cores


@pytest.mark.parametrize(
    ("quantity", "size"), [("64Mi", 64 << 20), ("1G", 10**9), ("1024", 1024), ("1.5Ki", 1536)]
)
def test_parse_memory(quantity: str, size: int) -> None:
    assert planning.parse_memory(quantity) == size


def test_duplicate_table_refused_for_the_newcomer() -> None:
    vrfs: dict[str, specs.VRFSpec] = {"a": {"table": 100}, "b": {"table": 100}}
    assert set(planning.find_conflicts(vrfs)) == {"b"}
    problems = planning.find_conflicts(vrfs, current={"b": 100})
    assert set(problems) == {"a"}
    assert problems["a"].reason == "TableConflict"
    assert "'b'" in problems["a"].message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"name": "x", "network": "red"}, {"name": "y", "network": "red"}),
        ({"name": "x", "network": "n", "vlan": 7}, {"name": "y", "network": "n", "vlan": 7}),
        ({"name": "x", "hostInterface": "eth1"}, {"name": "y", "hostInterface": "eth1"}),
    ],
)
def test_overlapping_interface_claims_refused(
    first: specs.InterfaceSpec, second: specs.InterfaceSpec
) -> None:
    vrfs: dict[str, specs.VRFSpec] = {
        "red": {"interfaces": [first]},
        "blue": {"interfaces": [second]},
    }
    problems = planning.find_conflicts(vrfs, current={"red": 1000})
    assert list(problems) == ["blue"]
    assert problems["blue"].reason == "InterfaceConflict"
    assert "claimed by VRF 'red'" in problems["blue"].message


def test_distinct_vlans_and_interfaces_do_not_conflict() -> None:
    vrfs: dict[str, specs.VRFSpec] = {
        "a": {"interfaces": [{"name": "x", "network": "n", "vlan": 7}]},
        "b": {"interfaces": [{"name": "x", "network": "n", "vlan": 8}]},
        "c": {"interfaces": [{"name": "x", "hostInterface": "eth1"}]},
    }
    assert planning.find_conflicts(vrfs) == {}


@pytest.mark.parametrize(
    ("vrfs", "current", "expected"),
    [
        ({"a": {}, "b": {}}, {}, {"a": 1000, "b": 1001}),
        ({"a": {}, "b": {}}, {"b": 1000}, {"a": 1001, "b": 1000}),
        ({"a": {"table": 1000}, "b": {}}, {"b": 1000}, {"a": 1000, "b": 1001}),
        ({"a": {"table": 7}, "b": {}}, {}, {"a": 7, "b": 1000}),
        ({"a": {}}, {"a": 254}, {"a": 1000}),
    ],
)
def test_allocate_tables(
    vrfs: dict[str, specs.VRFSpec], current: dict[str, int], expected: dict[str, int]
) -> None:
    assert planning.allocate_tables(vrfs, current=current) == expected


def test_allocation_exhausted() -> None:
    with pytest.raises(planning.SpecError) as caught:
        planning.allocate_tables({"a": {}, "b": {}}, first=1000, last=1000)
    assert caught.value.problem.reason == "TablesExhausted"


@pytest.mark.parametrize(
    ("requested", "has_vrf", "expected"),
    [
        ("auto", True, "vrf"),
        ("auto", False, "netns"),
        ("netns", True, "netns"),
        ("vrf", True, "vrf"),
    ],
)
def test_choose_backend(requested: specs.Backend, has_vrf: bool, expected: str) -> None:
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
    assert planning.selects_node(selector, labels) is selected


def test_plan_node_selects_refuses_and_allocates() -> None:
    vrfs: dict[str, specs.VRFSpec] = {
        "red": RED,
        "blue": {"interfaces": [{"name": "b0", "network": "blue"}]},
        "green": {"interfaces": [{"name": "g0", "network": "red"}]},
        "elsewhere": {"nodeSelector": {"zone": "b"}},
        "wants-vrf": {"backend": "vrf"},
    }
    result = planning.plan_node(
        vrfs,
        labels={"zone": "a"},
        current={"red": 1005},
        bridge_for=_bridge,
        kernel_has_vrf=False,
    )
    assert sorted(result.desired) == ["blue", "red"]
    assert result.desired["red"].table == 1005
    assert result.desired["blue"].table == 1000
    assert result.refused["green"].reason == "InterfaceConflict"
    assert result.refused["wants-vrf"].reason == "BackendUnavailable"
    assert "elsewhere" not in result.refused
