"""Names both sides derive from a VM's identity (``api/naming``): one derivation each,
pinned to fixed values so a change that would give existing guests new MACs or leave
their taps and domains behind fails here, in any process and on any Python."""

from __future__ import annotations

import re

import pytest

from kubevisor.agent import domainxml
from kubevisor.agent.vms import placing
from kubevisor.api import common, naming, virtualmachines
from kubevisor.controller.vms import resolving

pytestmark = pytest.mark.unit

UID = "0b3f6a2e-9c1d-4e8a-b7f5-2d6c8e1a4f90"


@pytest.mark.parametrize(
    ("uid", "nic", "expected"),
    [
        # The values the controller has always written into status.machine (checked
        # against the former controller/resolving.mac_for), hence what guests run with.
        (UID, "eth0", "52:54:f7:44:f6:6d"),
        (UID, "eth1", "52:54:45:c3:fb:fd"),
        ("u1", "eth0", "52:54:0b:6f:b4:0c"),
    ],
)
def test_mac_is_a_fixed_function_of_uid_and_nic(uid: str, nic: str, expected: str) -> None:
    assert naming.mac(uid, nic) == expected


@pytest.mark.parametrize(
    ("uid", "nic"), [("u1", "eth0"), ("u1", "eth1"), ("0000-1111", "eth0"), ("x" * 36, "n")]
)
def test_generated_macs_are_stable_unicast_and_locally_administered(uid: str, nic: str) -> None:
    mac = naming.mac(uid, nic)
    assert mac == naming.mac(uid, nic)
    assert re.match(common.MAC_PATTERN, mac)
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 0x02  # locally administered


def test_macs_differ_per_vm_and_nic() -> None:
    macs = {naming.mac(f"uid-{i}", n) for i in range(200) for n in ("eth0", "eth1")}
    assert len(macs) == 400


@pytest.mark.parametrize(
    ("uid", "index", "expected"),
    [(UID, 0, "kva415597en0"), (UID, 3, "kva415597en3"), ("x" * 36, 15, None)],
)
def test_tap_names_are_fixed_short_and_per_nic(uid: str, index: int, expected: str | None) -> None:
    tap = naming.tap(uid, index)
    if expected is not None:
        assert tap == expected
    assert len(tap) <= 15 and tap.endswith(f"n{index}")
    assert re.match(common.IFNAME_PATTERN, tap)


@pytest.mark.parametrize(
    ("namespace", "name", "domain"),
    [("default", "web", "default_web"), ("team-a", "db.1", "team-a_db.1")],
)
def test_domain_name_round_trip(namespace: str, name: str, domain: str) -> None:
    assert naming.domain_name(namespace, name) == domain
    assert naming.vm_of_domain(domain) == (namespace, name)
    assert domainxml.Identity(namespace, name, "uid").domain_name == domain


@pytest.mark.parametrize("foreign", ["debian12", ""])
def test_a_domain_not_named_by_us_is_no_vm(foreign: str) -> None:
    assert naming.vm_of_domain(foreign) is None


def test_controller_and_agent_agree_on_a_nics_mac() -> None:
    """The controller resolves the MAC into status.machine; the agent, for a NIC that
    reaches it without one, falls back to the same derivation: one address either way."""
    vm = virtualmachines.VirtualMachineSpec.model_validate(
        {"memory": "128Mi", "disks": [], "nics": [{"name": "eth0", "network": "default"}]}
    )
    resolved = resolving.resolve(None, vm, uid=UID)
    assert resolved.nics[0].mac == "52:54:f7:44:f6:6d"
    bare = resolved.model_copy(
        update={"nics": [n.model_copy(update={"mac": None}) for n in resolved.nics]}
    )
    identity = domainxml.Identity("default", "web", UID)
    for machine in (resolved, bare):
        placed = placing.nic_placements(machine, identity, {"default": "kvbr0"})
        assert [(p.mac, p.tap) for p in placed] == [("52:54:f7:44:f6:6d", "kva415597en0")]
