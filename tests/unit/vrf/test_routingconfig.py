"""The typed routing spec written as BIRD and FRR config: pure, table-tested (the daemons'
own parsers accept these configs: tests/integration/test_vrf_frr.py)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from kubevisor.agent.vrfs import daemons, frr, routingconfig
from kubevisor.api import vrfrouting, vrfs

pytestmark = pytest.mark.unit

BGP = {"localAs": 65001, "neighbors": [{"address": "10.0.0.2", "remoteAs": 65002}]}
SPECS: dict[str, dict[str, Any]] = {
    "bgp": {"bgp": BGP, "announce": ["198.51.100.0/24"]},
    "bgp-filtered": {
        "routerId": "10.0.0.1",
        "bgp": {**BGP, "neighbors": [*BGP["neighbors"], {"address": "fd00::2", "remoteAs": 1}]},
        "importPrefixes": ["203.0.113.0/24"],
    },
    "ospf": {"ospf": {"area": 1, "interfaces": ["red0"]}},
}


def _routing(name: str, daemon: str) -> vrfrouting.VRFRouting:
    return vrfrouting.VRFRouting.model_validate({"daemon": daemon, **SPECS[name]})


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        (
            "bgp",
            [
                "protocol bgp neighbor1 {\n  local as 65001;\n  neighbor 10.0.0.2 as 65002;\n"
                '  ipv4 { import all; export where proto = "announce4"; };\n}',
                "protocol static announce4 { ipv4; route 198.51.100.0/24 blackhole; }",
                "kernel table 1234;",
            ],
            ["router id", "protocol ospf"],
        ),
        (
            "bgp-filtered",
            [
                "router id 10.0.0.1;",
                "ipv4 { import where net ~ [ 203.0.113.0/24+ ]; export none; };",
                "neighbor fd00::2 as 1;\n  ipv6 { import none; export none; };",
            ],
            ["protocol static"],
        ),
        (
            "ospf",
            ['area 1 { interface "red0"; };', "ipv4 { import all; export none; };"],
            ["protocol bgp"],
        ),
    ],
)
def test_bird(name: str, present: list[str], absent: list[str]) -> None:
    text = routingconfig.bird(_routing(name, "bird"), 1234)
    for part in present:
        assert part in text
    for part in absent:
        assert part not in text


@pytest.mark.parametrize("name", ["bgp", "ospf"])
def test_bird_on_l3mdev_binds_every_network_protocol_to_the_device(name: str) -> None:
    """Issue 18: on the l3mdev backend BIRD runs in the node's namespace, so its kernel,
    BGP and OSPF protocols name the VRF's device; the netns config names none."""
    bound = routingconfig.bird(_routing(name, "bird"), 1234, "kvrf0123")
    plain = routingconfig.bird(_routing(name, "bird"), 1234)
    assert 'protocol kernel kernel4 { vrf "kvrf0123"; ipv4' in bound
    assert "kernel table 1234;" in bound
    header = "protocol bgp neighbor1 {" if name == "bgp" else "protocol ospf v2 ospf4 {"
    assert f'{header}\n  vrf "kvrf0123";\n' in bound
    assert "vrf" not in plain
    assert bound.count("vrf ") == plain.count("protocol ") - plain.count("protocol static") - 1


@pytest.mark.parametrize(
    ("name", "present", "absent", "needs"),
    [
        (
            "bgp",
            [
                "router bgp 65001\n",
                " neighbor 10.0.0.2 remote-as 65002\n",
                " address-family ipv4 unicast\n  network 198.51.100.0/24\n",
                "  neighbor 10.0.0.2 route-map KV-ANNOUNCE-4 out\n",
                "ip prefix-list KV-ANNOUNCE-4 seq 5 permit 198.51.100.0/24\n",
                "route-map KV-IMPORT-4 permit 10\nexit\n",  # no filter: accept all
            ],
            ["bgp router-id", "router ospf"],
            ("zebra", "staticd", "bgpd"),
        ),
        (
            "bgp-filtered",
            [
                " bgp router-id 10.0.0.1\n",
                "ip prefix-list KV-IMPORT-4 seq 5 permit 203.0.113.0/24 le 32\n",
                "route-map KV-IMPORT-6 deny 10\n",  # no IPv6 prefix accepted
                "route-map KV-ANNOUNCE-4 deny 10\n",  # nothing to announce
                " address-family ipv6 unicast\n  neighbor fd00::2 activate\n",
            ],
            ["  network "],
            ("zebra", "staticd", "bgpd"),
        ),
        (
            "ospf",
            [
                "router ospf\n",
                "interface red0\n ip ospf area 1\nexit\n",
                "ip protocol ospf route-map KV-IMPORT-4\n",
            ],
            ["router bgp"],
            ("zebra", "staticd", "ospfd"),
        ),
    ],
)
def test_frr(name: str, present: list[str], absent: list[str], needs: tuple[str, ...]) -> None:
    text = routingconfig.frr(_routing(name, "frr"))
    for part in present:
        assert part in text
    for part in absent:
        assert part not in text
    assert frr.processes_for(text) == needs


def test_config_is_the_users_text_or_the_typed_specs() -> None:
    raw = vrfrouting.VRFRouting.model_validate({"daemon": "bird", "config": "router id 1.2.3.4;\n"})
    assert routingconfig.config(raw, 7) == "router id 1.2.3.4;\n"
    assert routingconfig.config(_routing("ospf", "frr"), 7) == routingconfig.frr(
        _routing("ospf", "frr")
    )
    spec = vrfs.VRFSpec.model_validate(
        {
            "interfaces": [{"name": "red0", "network": "red"}],
            "routing": {"daemon": "bird", **SPECS["ospf"]},
        }
    )
    wanted = daemons.wanted(spec, 7)
    assert wanted is not None and "kernel table 7;" in wanted.config


@pytest.mark.parametrize(
    ("routing", "fragment"),
    [
        ({"daemon": "bird", "config": "x", "bgp": BGP}, "are exclusive"),
        ({"daemon": "bird", "config": "x", "importPrefixes": ["10.0.0.0/8"]}, "are exclusive"),
        ({"daemon": "bird", "announce": ["10.0.0.0/8"]}, "set bgp too"),
        ({"daemon": "bird", "bgp": BGP, "routerId": "fd00::1"}, "IPv4"),
        (
            {"daemon": "bird", "bgp": {**BGP, "neighbors": BGP["neighbors"] * 2}},
            "must be unique",
        ),
        ({"daemon": "bird", "ospf": {"interfaces": ["blue0"]}}, "the VRF's interfaces"),
    ],
)
def test_typed_spec_refusals(routing: dict[str, Any], fragment: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=fragment):
        vrfs.VRFSpec.model_validate(
            {"interfaces": [{"name": "red0", "network": "red"}], "routing": routing}
        )
