"""Template resolution: overrides win field by field, MACs are stable, clones copy."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import machines, naming, virtualmachines
from kubevisor.controller.vms import resolving

pytestmark = pytest.mark.unit

TEMPLATE: dict[str, Any] = {
    "cpu": {"cores": 1},
    "memory": "256Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
    "nodeSelector": {"zone": "a"},
}


def _template() -> machines.MachineSpec:
    return machines.MachineSpec.model_validate(TEMPLATE)


def _vm(**spec: Any) -> virtualmachines.VirtualMachineSpec:
    return virtualmachines.VirtualMachineSpec.model_validate({"templateRef": {"name": "t"}, **spec})


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({}, "memory", "256Mi"),
        ({"memory": "1Gi"}, "memory", "1Gi"),
        ({"cpu": {"cores": 4}}, "cpu", {"cores": 4}),
        ({"gpus": 1}, "gpus", 1),
        ({"nodeSelector": {"gpu": "yes"}}, "nodeSelector", {"gpu": "yes"}),
        ({"disks": [{"name": "data", "size": "2Gi"}]}, "disks", [{"name": "data"}]),
    ],
)
def test_vm_fields_override_the_template(
    overrides: dict[str, Any], field: str, expected: Any
) -> None:
    wire = resolving.resolve(_template(), _vm(**overrides), uid="u").model_dump(
        mode="json", by_alias=True
    )
    if field == "disks":
        assert [d["name"] for d in wire["disks"]] == [d["name"] for d in expected]
    elif isinstance(expected, dict):
        assert {k: wire[field][k] for k in expected} == expected
    else:
        assert wire[field] == expected


def test_template_is_not_modified() -> None:
    template = _template()
    resolving.resolve(template, _vm(memory="2Gi"), uid="u")
    assert template.memory == "256Mi"


def test_inline_vm_without_template() -> None:
    vm = virtualmachines.VirtualMachineSpec.model_validate({"memory": "128Mi", "disks": []})
    machine = resolving.resolve(None, vm, uid="u")
    assert machine.memory == "128Mi" and machine.cpu.cores == 1


def test_explicit_mac_is_kept_others_generated() -> None:
    vm = _vm(
        nics=[
            {"name": "eth0", "network": "default"},
            {"name": "eth1", "network": "default", "vlan": 100, "mac": "52:54:00:12:34:56"},
        ]
    )
    nics = resolving.resolve(_template(), vm, uid="abc").nics
    assert nics[0].mac == naming.mac("abc", "eth0")
    assert nics[1].mac == "52:54:00:12:34:56"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"memory": "512Mi"}, ["memory"]),
        ({"memory": "512Mi", "cpu": {"cores": 2}}, ["cpu", "memory"]),
        ({"nics": [{"name": "eth0", "network": "other"}]}, ["nics"]),
    ],
)
def test_changed_fields(change: dict[str, Any], expected: list[str]) -> None:
    running = resolving.resolve(_template(), _vm(), uid="u")
    wanted = resolving.resolve(_template(), _vm(**change), uid="u")
    assert resolving.changed_fields(running, wanted) == expected


def test_clone_copies_disks_fully_and_gets_new_macs() -> None:
    source = resolving.resolve(_template(), _vm(), uid="source-uid")
    clone_spec = virtualmachines.VirtualMachineSpec.model_validate(
        {"source": {"virtualMachine": {"name": "web"}}, "memory": "512Mi"}
    )
    clone = resolving.resolve_clone(
        source, clone_spec, source_namespace="ns", source_name="web", uid="clone-uid"
    )
    assert clone.memory == "512Mi"
    assert [(d.name, d.image, d.clone, d.retain) for d in clone.disks] == [
        ("root", "vm:ns/web/root", "full", False)
    ]
    assert clone.nics[0].mac == naming.mac("clone-uid", "eth0")
    assert clone.nics[0].mac != source.nics[0].mac


def test_restore_copies_the_backup_files_and_gets_new_macs() -> None:
    recorded = resolving.resolve(_template(), _vm(), uid="source-uid")
    spec = virtualmachines.VirtualMachineSpec.model_validate(
        {"source": {"backup": {"name": "web-nightly"}}, "memory": "512Mi"}
    )
    restored = resolving.resolve_restore(
        recorded, {"root": "/nas/ns/web-nightly/root.qcow2"}, spec, uid="restored-uid"
    )
    assert restored.memory == "512Mi"
    assert [(d.name, d.image, d.clone, d.retain) for d in restored.disks] == [
        ("root", "/nas/ns/web-nightly/root.qcow2", "full", False)
    ]
    assert restored.nics[0].mac == naming.mac("restored-uid", "eth0")
