"""The models refuse what the CRDs refuse, so code that builds objects in Python finds
out before the API server does; and the pure helpers on them behave."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from kubevisor.api import (
    common,
    desktopclaims,
    desktoppools,
    machines,
    migrations,
    storagebackends,
    virtualmachines,
    vmtemplates,
    vrfs,
)

pytestmark = pytest.mark.unit

TEMPLATE = {"cpu": {"cores": 1}, "memory": "256Mi", "disks": [{"name": "root", "image": "tiny"}]}
ROUTE = {"prefix": "10.1.0.0/16", "via": "10.0.0.1"}
IFACE = {"name": "up0", "network": "default", "addresses": ["10.0.0.2/24"]}

BAD: list[tuple[str, type[common.Model], dict[str, Any]]] = [
    ("template-no-memory", machines.MachineSpec, {"cpu": {}}),
    ("template-zero-memory", machines.MachineSpec, {**TEMPLATE, "memory": "0"}),
    ("template-negative-memory", machines.MachineSpec, {**TEMPLATE, "memory": "-1Gi"}),
    ("vlan-0", machines.NIC, {"name": "a", "network": "default", "vlan": 0}),
    ("vlan-4095", machines.NIC, {"name": "a", "network": "default", "vlan": 4095}),
    (
        "multicast-mac",
        machines.NIC,
        {"name": "a", "network": "default", "mac": "01:00:5e:00:00:01"},
    ),
    ("bad-bus", machines.Disk, {"name": "a", "bus": "ide"}),
    ("lun-on-virtio", machines.Disk, {"name": "a", "device": "lun", "backend": "san"}),
    ("lun-without-backend", machines.Disk, {"name": "a", "device": "lun", "bus": "scsi"}),
    ("backend-nfs-without-nfs", storagebackends.StorageBackendSpec, {"type": "nfs"}),
    (
        "backend-local-with-nfs",
        storagebackends.StorageBackendSpec,
        {"type": "local", "nfs": {"server": "10.0.0.2", "export": "/x"}},
    ),
    (
        "backend-bad-iqn",
        storagebackends.StorageBackendSpec,
        {"type": "iscsi", "iscsi": {"portal": "10.0.0.2", "iqn": "eui.1234"}},
    ),
    ("vm-nothing", virtualmachines.VirtualMachineSpec, {"runStrategy": "Always"}),
    ("vm-memory-only", virtualmachines.VirtualMachineSpec, {"memory": "1Gi"}),
    ("vm-bad-strategy", virtualmachines.VirtualMachineSpec, {"runStrategy": "Sometimes"}),
    (
        "vm-source-both",
        virtualmachines.VirtualMachineSpec,
        {"source": {"virtualMachine": {"name": "a"}, "backup": {"name": "b"}}},
    ),
    ("vm-source-empty", virtualmachines.VirtualMachineSpec, {"source": {}}),
    ("vrf-table-254", vrfs.VRFSpec, {"table": 254}),
    ("vrf-table-0", vrfs.VRFSpec, {"table": 0}),
    ("vrf-iface-both", vrfs.VRFInterface, {**IFACE, "hostInterface": "eth1"}),
    ("vrf-iface-neither", vrfs.VRFInterface, {"name": "up0"}),
    ("vrf-vlan-no-network", vrfs.VRFInterface, {"name": "v", "vlan": 5, "hostInterface": "e"}),
    ("vrf-iface-lo", vrfs.VRFInterface, {**IFACE, "name": "lo"}),
    ("vrf-iface-too-long", vrfs.VRFInterface, {**IFACE, "name": "x" * 16}),
    ("vrf-bad-cidr", vrfs.VRFInterface, {**IFACE, "addresses": ["10.0.0.300/24"]}),
    ("vrf-cidr-no-prefix", vrfs.VRFInterface, {**IFACE, "addresses": ["10.0.0.1"]}),
    ("vrf-route-host-bits", vrfs.Route, {**ROUTE, "prefix": "10.1.0.1/16"}),
    ("vrf-route-bad-via", vrfs.Route, {**ROUTE, "via": "10.0.0.x"}),
    ("vrf-route-family", vrfs.Route, {**ROUTE, "via": "fd00::1"}),
    ("vrf-unicast-nowhere", vrfs.Route, {"prefix": "10.1.0.0/16"}),
    ("vrf-blackhole-via", vrfs.Route, {**ROUTE, "type": "blackhole"}),
    (
        "vrf-route-device-unknown",
        vrfs.VRFSpec,
        {"interfaces": [IFACE], "routes": [{"prefix": "10.1.0.0/16", "device": "nope"}]},
    ),
    ("vrf-duplicate-iface", vrfs.VRFSpec, {"interfaces": [IFACE, IFACE]}),
    ("migration-no-vm", migrations.MigrationSpec, {}),
    ("migration-zero-rtt", migrations.MigrationSpec, {"vmName": "a", "policy": {"maxRTTMs": 0}}),
    (
        "pool-min-gt-max",
        desktoppools.DesktopPoolSpec,
        {"templateRef": {"name": "t"}, "min": 3, "max": 2},
    ),
    (
        "pool-spare-gt-max",
        desktoppools.DesktopPoolSpec,
        {"templateRef": {"name": "t"}, "max": 1, "spare": 2},
    ),
    ("claim-no-pool", desktopclaims.DesktopClaimSpec, {"user": "alice"}),
]


#: case -> (the field the one error is reported on, dotted wire names, "" for a rule of the
#: whole object; a fragment of its message): a case rejected for another reason than the
#: one it is named after proves nothing.
WHERE: dict[str, tuple[str, str]] = {
    "template-no-memory": ("memory", "Field required"),
    "template-zero-memory": ("memory", "greater than zero"),
    "template-negative-memory": ("memory", "should match pattern"),
    "vlan-0": ("vlan", "greater than or equal to 1"),
    "vlan-4095": ("vlan", "less than or equal to 4094"),
    "multicast-mac": ("mac", "should match pattern"),
    "bad-bus": ("bus", "'virtio', 'sata' or 'scsi'"),
    "lun-on-virtio": ("", "it needs bus scsi and a backend"),
    "lun-without-backend": ("", "it needs bus scsi and a backend"),
    "backend-nfs-without-nfs": ("", "type nfs takes nfs settings"),
    "backend-local-with-nfs": ("", "type local takes no nfs or iscsi settings"),
    "backend-bad-iqn": ("iscsi.iqn", "should match pattern"),
    "vm-nothing": ("", "needs spec.templateRef"),
    "vm-memory-only": ("", "needs spec.templateRef"),
    "vm-bad-strategy": ("runStrategy", "'Always'"),
    "vm-source-both": ("source", "exactly one of spec.source"),
    "vm-source-empty": ("source", "exactly one of spec.source"),
    "vrf-table-254": ("", "253, 254 and 255"),
    "vrf-table-0": ("table", "greater than or equal to 1"),
    "vrf-iface-both": ("", "exactly one of network"),
    "vrf-iface-neither": ("", "exactly one of network"),
    "vrf-vlan-no-network": ("", "set network too"),
    "vrf-iface-lo": ("", "'lo' is the VRF's own loopback"),
    "vrf-iface-too-long": ("name", "at most 15 characters"),
    "vrf-bad-cidr": ("addresses.0", "'10.0.0.300/24'"),
    "vrf-cidr-no-prefix": ("addresses.0", "is not a CIDR"),
    "vrf-route-host-bits": ("prefix", "host bits set"),
    "vrf-route-bad-via": ("via", "'10.0.0.x'"),
    "vrf-route-family": ("", "same address family"),
    "vrf-unicast-nowhere": ("", "needs via or device"),
    "vrf-blackhole-via": ("", "only unicast routes take via or device"),
    "vrf-route-device-unknown": ("", "must be one of the VRF's interfaces"),
    "vrf-duplicate-iface": ("", "names must be unique"),
    "migration-no-vm": ("vmName", "Field required"),
    "migration-zero-rtt": ("policy.maxRTTMs", "greater than 0"),
    "pool-min-gt-max": ("", "min must not exceed max"),
    "pool-spare-gt-max": ("", "spare must not exceed max"),
    "claim-no-pool": ("poolRef", "Field required"),
}


@pytest.mark.parametrize(("case_id", "model", "data"), BAD, ids=[b[0] for b in BAD])
def test_model_rejects(case_id: str, model: type[common.Model], data: dict[str, Any]) -> None:
    loc, fragment = WHERE[case_id]
    with pytest.raises(pydantic.ValidationError) as caught:
        model.model_validate(data)
    errors = [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]
    assert len(errors) == 1, errors
    assert errors[0][0] == loc, errors
    assert fragment in errors[0][1], errors


GOOD: list[tuple[str, type[common.Model], dict[str, Any]]] = [
    ("template", machines.MachineSpec, TEMPLATE),
    ("vm-template", virtualmachines.VirtualMachineSpec, {"templateRef": {"name": "t"}}),
    ("vm-inline", virtualmachines.VirtualMachineSpec, {"memory": "1Gi", "disks": []}),
    ("vm-clone", virtualmachines.VirtualMachineSpec, {"source": {"virtualMachine": {"name": "a"}}}),
    ("vrf-empty", vrfs.VRFSpec, {}),
    ("vrf-host-iface", vrfs.VRFInterface, {"name": "e1", "hostInterface": "eth1"}),
    ("vrf-v6-route", vrfs.Route, {"prefix": "::/0", "via": "fd00::1"}),
    (
        "vrf-device-route",
        vrfs.VRFSpec,
        {"interfaces": [IFACE], "routes": [{"prefix": "10.1.0.0/16", "device": "up0"}]},
    ),
    ("vrf-blackhole", vrfs.Route, {"prefix": "192.0.2.0/24", "type": "blackhole"}),
    ("migration", migrations.MigrationSpec, {"vmName": "a"}),
    ("pool", desktoppools.DesktopPoolSpec, {"templateRef": {"name": "t"}, "max": 1}),
]


def _dropped(model: type[common.Model], data: dict[str, Any]) -> dict[str, Any]:
    """What parsing lost or changed: the input against the parsed model's wire form.

    Models ignore unknown fields (as the API server prunes them), so a misspelled field
    would vanish without an error; comparing the round trip catches it.
    """
    parsed = model.model_validate(data).to_json()
    return {k: v for k, v in data.items() if parsed.get(k, object()) != v}


@pytest.mark.parametrize(("case_id", "model", "data"), GOOD, ids=[g[0] for g in GOOD])
def test_model_accepts(case_id: str, model: type[common.Model], data: dict[str, Any]) -> None:
    assert _dropped(model, data) == {}
    assert model.model_validate(data).to_json() == data


def test_a_misspelled_field_is_caught_by_the_round_trip() -> None:
    data = {"templateRef": {"name": "t"}, "runStrategyy": "Halted"}
    assert _dropped(virtualmachines.VirtualMachineSpec, data) == {"runStrategyy": "Halted"}


def test_accepted_values_are_parsed_into_their_fields() -> None:
    spec = machines.MachineSpec.model_validate(TEMPLATE)
    assert spec.cpu.cores == 1 and spec.memory == "256Mi"
    assert [(d.name, d.image) for d in spec.disks] == [("root", "tiny")]
    route = vrfs.Route.model_validate({"prefix": "::/0", "via": "fd00::1"})
    assert (route.prefix, route.via) == ("::/0", "fd00::1")
    iface = vrfs.VRFInterface.model_validate({"name": "e1", "hostInterface": "eth1"})
    assert (iface.host_interface, iface.network) == ("eth1", None)
    clone = virtualmachines.VirtualMachineSpec.model_validate(
        {"source": {"virtualMachine": {"name": "a"}}}
    )
    assert clone.source is not None and clone.source.virtual_machine is not None
    assert clone.source.virtual_machine.name == "a"
    pool = desktoppools.DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 1})
    assert (pool.template_ref.name, pool.max) == ("t", 1)


def test_defaults_match_the_agreed_ones() -> None:
    policy = migrations.MigrationSpec.model_validate({"vmName": "a"}).policy
    assert (policy.max_downtime_ms, policy.auto_converge, policy.post_copy) == (300, True, False)
    assert (policy.completion_timeout_seconds, policy.max_rtt_ms) == (300, 10)
    assert policy.bandwidth_mi_bps is None and policy.allow_block_copy is False
    disk = machines.Disk(name="root")
    assert (disk.bus, disk.clone, disk.storage, disk.retain) == ("virtio", "linked", "local", False)
    spec = virtualmachines.VirtualMachineSpec.model_validate({"templateRef": {"name": "t"}})
    assert spec.run_strategy == virtualmachines.RunStrategy.ALWAYS
    assert spec.cpu is None and spec.memory is None, "VM fields must not shadow the template"
    assert vrfs.VRFSpec().backend == "auto"


def test_wire_names_are_camel_case_with_agreed_exceptions() -> None:
    status = virtualmachines.VirtualMachineStatus(domain_uuid="u", node_name="n")
    assert status.to_json() == {"domainUUID": "u", "nodeName": "n"}
    policy = migrations.MigrationPolicy(max_rtt_ms=5, bandwidth_mi_bps=10)
    assert policy.to_json() == {"maxRTTMs": 5, "bandwidthMiBps": 10}


def test_effective_machine_overrides_field_by_field() -> None:
    template = vmtemplates.VMTemplate.model_validate({"metadata": {"name": "t"}, "spec": TEMPLATE})
    vm = virtualmachines.VirtualMachineSpec.model_validate(
        {"templateRef": {"name": "t"}, "memory": "1Gi", "nics": [{"name": "a", "network": "x"}]}
    )
    machine = machines.effective(template.spec, vm)
    assert machine.memory == "1Gi"
    assert machine.disks == template.spec.disks
    assert [n.network for n in machine.nics] == ["x"]


def test_effective_machine_without_template_needs_memory() -> None:
    inline = virtualmachines.VirtualMachineSpec.model_validate(
        {"memory": "512Mi", "disks": [{"name": "d", "size": "1Gi"}]}
    )
    assert machines.effective(None, inline).cpu.cores == 1
    clone = virtualmachines.VirtualMachineSpec.model_validate({"source": {"backup": {"name": "b"}}})
    with pytest.raises(pydantic.ValidationError):
        machines.effective(None, clone)
