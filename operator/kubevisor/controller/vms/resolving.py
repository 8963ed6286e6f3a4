"""Template resolution: the machine a VirtualMachine runs with, MACs included.

Pure functions. The result is what the controller records in ``status.machine`` and
what the agent realizes, so a template edit reaches a running VM only through an
explicit restart (see ``changed_fields``).
"""

from __future__ import annotations

from typing import Any

from kubevisor.api import machines, naming, virtualmachines


def with_macs(machine: machines.MachineSpec, *, uid: str) -> machines.MachineSpec:
    """``machine`` with every NIC that has no MAC given its stable one (``api/naming``)."""
    nics = [
        nic if nic.mac is not None else nic.model_copy(update={"mac": naming.mac(uid, nic.name)})
        for nic in machine.nics
    ]
    return machine.model_copy(update={"nics": nics})


def overrides_of(spec: virtualmachines.VirtualMachineSpec) -> machines.MachineOverrides:
    """The machine fields a VM sets itself (run strategy and references left out)."""
    fields = set(machines.MachineOverrides.model_fields)
    data = spec.model_dump(include=fields, exclude_unset=True, exclude_none=True)
    return machines.MachineOverrides.model_validate(data)


def resolve(
    template: machines.MachineSpec | None,
    vm: virtualmachines.VirtualMachineSpec,
    *,
    uid: str,
) -> machines.MachineSpec:
    """Template values replaced field by field by the VM's own fields, MACs filled in.

    A VM field replaces the template's whole value (a VM's ``nics`` list replaces the
    template's list). Raises ``pydantic.ValidationError`` when neither supplies a
    required field (memory).
    """
    return with_macs(machines.effective(template, overrides_of(vm)), uid=uid)


def clone_image(namespace: str, name: str, disk: str) -> str:
    """The image reference of a clone's disk: the source VM's disk, which the agent
    resolves with its own disk layout (see docs/architecture.md, "Clones")."""
    return f"vm:{namespace}/{name}/{disk}"


def resolve_clone(
    source: machines.MachineSpec,
    vm: virtualmachines.VirtualMachineSpec,
    *,
    source_namespace: str,
    source_name: str,
    uid: str,
) -> machines.MachineSpec:
    """The machine of a clone: the source's machine with the clone's own fields on top,
    each disk a full copy of the source's disk, and new MACs.

    The clone's ``disks`` field is ignored: the disks are what is cloned. MACs the
    source had generated are dropped (they belong to the source's identity); MACs the
    clone's spec sets explicitly are kept.
    """
    base = source.model_copy(
        update={
            "nics": [n.model_copy(update={"mac": None}) for n in source.nics],
            "disks": [
                d.model_copy(
                    update={
                        "image": clone_image(source_namespace, source_name, d.name),
                        "clone": "full",
                        "retain": False,
                    }
                )
                for d in source.disks
            ],
        }
    )
    overrides = overrides_of(vm).model_copy(update={"disks": None})
    return with_macs(machines.effective(base, overrides), uid=uid)


def resolve_restore(
    recorded: machines.MachineSpec,
    copies: dict[str, str],
    vm: virtualmachines.VirtualMachineSpec,
    *,
    uid: str,
) -> machines.MachineSpec:
    """The machine of a VM restored from a backup: the machine the backup recorded, with
    the VM's own fields on top (except ``disks``), each disk a full (flattened) copy of
    the backup's file for it (``copies``: disk name -> path; an incremental's file reads
    through its backing chain, so the copy is the whole disk), and new MACs (docs/backup.md).
    Disks the backup has no copy of are left out."""
    base = recorded.model_copy(
        update={
            "nics": [n.model_copy(update={"mac": None}) for n in recorded.nics],
            "disks": [
                d.model_copy(update={"image": copies[d.name], "clone": "full", "retain": False})
                for d in recorded.disks
                if d.name in copies
            ],
        }
    )
    overrides = overrides_of(vm).model_copy(update={"disks": None})
    return with_macs(machines.effective(base, overrides), uid=uid)


def _wire(machine: machines.MachineSpec) -> dict[str, Any]:
    return machine.model_dump(mode="json", by_alias=True)


def changed_fields(running: machines.MachineSpec, wanted: machines.MachineSpec) -> list[str]:
    """Top-level machine fields (wire names) that differ: what a restart would change."""
    a, b = _wire(running), _wire(wanted)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
