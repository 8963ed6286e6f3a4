"""Segment bridges shared by VM NICs and VRF interfaces: naming, mapping, pruning (pure)."""

from __future__ import annotations

import pytest

from kubevisor.agent import main, segments
from kubevisor.agent.vrfs import handling as vrfhandling
from kubevisor.api import vrfs

pytestmark = pytest.mark.unit

NETWORKS = {"default": "kvbr0", "red": "kvn-red", "blue": "kvn-blue"}
MANAGED = frozenset({"red", "blue"})


def seg(network: str, vlan: int | None = None) -> segments.Segment:
    return segments.segment_of(network, vlan, NETWORKS, MANAGED)


@pytest.mark.parametrize(
    ("up", "needed", "gone"),
    [
        # a bridge only a VRF needs stays (needed is VMs' and VRFs' union)
        ([seg("red")], [seg("red")], []),
        # nobody needs the managed network: its bridge goes
        ([seg("red"), seg("blue")], [seg("blue")], [seg("red")]),
        # the administrator's bridge is never deleted
        ([seg("default")], [], []),
        # a VLAN segment goes when unneeded, also on the administrator's bridge
        ([seg("default"), seg("default", 7)], [seg("default")], [seg("default", 7)]),
        # a managed base bridge stays while one of its VLANs is needed ...
        ([seg("red"), seg("red", 5)], [seg("red", 5)], []),
        # ... and goes after its VLAN child, in that order
        ([seg("red"), seg("red", 5)], [], [seg("red", 5), seg("red")]),
        ([], [seg("red")], []),
    ],
)
def test_prunable(
    up: list[segments.Segment], needed: list[segments.Segment], gone: list[segments.Segment]
) -> None:
    assert segments.prunable(up, needed) == gone


def test_managed_bridge_names_fit_ifnamsiz_and_stay_distinct() -> None:
    assert segments.managed_bridge_name("red") == "kvn-red"
    long_a = segments.managed_bridge_name("engineering-lab-a")
    long_b = segments.managed_bridge_name("engineering-lab-b")
    assert len(long_a) <= segments.MAX_IFNAME and len(long_b) <= segments.MAX_IFNAME
    assert long_a != long_b and long_a.startswith("kvn-")
    assert segments.managed_bridge_name("engineering-lab-a") == long_a  # stable


def test_segment_of_marks_managed_networks_and_vlan_bridges() -> None:
    assert seg("red").managed and seg("red").bridge == "kvn-red"
    assert not seg("default").managed
    assert seg("red", 5).bridge == "kvn-redv5" and seg("red", 5).name == "red-vlan-5"
    with pytest.raises(KeyError):
        segments.segment_of("green", None, NETWORKS, MANAGED)


@pytest.mark.parametrize(
    ("flags", "bridges", "managed"),
    [
        ([], {"default": "kvbr0"}, set()),
        ([("default", "kvbr0"), ("red", None)], {"default": "kvbr0", "red": "kvn-red"}, {"red"}),
        ([("lab", "br-lab")], {"lab": "br-lab"}, set()),
    ],
)
def test_network_flags(
    flags: list[tuple[str, str | None]], bridges: dict[str, str], managed: set[str]
) -> None:
    assert main.network_mapping(flags) == (bridges, frozenset(managed))


def test_network_flag_parsing() -> None:
    args = main.parse_args(["--node=n", "--network=default=kvbr0", "--network=red"])
    assert args.network == [("default", "kvbr0"), ("red", None)]
    with pytest.raises(SystemExit):
        main.parse_args(["--node=n", "--network=red="])


def test_vrf_segments_are_the_segments_vm_nics_use() -> None:
    specs = [
        {"interfaces": [{"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]}]},
        {
            "interfaces": [
                {"name": "t0", "network": "red", "vlan": 5},
                {"name": "up", "hostInterface": "eth9"},
            ]
        },
        {"interfaces": [{"name": "g0", "network": "green"}]},  # not offered: realizer reports
    ]
    parsed = [vrfs.VRFSpec.model_validate(s) for s in specs]
    got = vrfhandling.vrf_segments(parsed, NETWORKS, MANAGED)
    assert got == {seg("red"), seg("red", 5)}
    # the same Segment value a VM NIC on red gets, so both land on one bridge
    assert vrfhandling.bridge_mapper(NETWORKS)("red", None) == seg("red").bridge
