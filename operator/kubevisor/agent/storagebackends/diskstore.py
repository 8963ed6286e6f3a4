"""A VM's disks on whatever holds them — node files or an NFS backend — behind one face,
so a VM pass (or a migration target) plans, makes and deletes disks without asking where
each one lives. The rules stay where they are: :mod:`kubevisor.agent.disks` plans (pure)
and makes node files; :mod:`.nfsdisks` makes and deletes images on an export.
"""

from __future__ import annotations

import asyncio

from kubevisor.agent import disks, domainxml
from kubevisor.agent.storagebackends import catalog as backendcatalog
from kubevisor.agent.storagebackends import nfsdisks
from kubevisor.api import conditions, machines


class DiskStore:
    """``catalog``: the StorageBackends known here (None: no disk may name one);
    ``nfs``: the node's NFS hand (None: an NFS disk is refused with StorageFailed)."""

    def __init__(
        self,
        layout: disks.Layout,
        catalog: backendcatalog.Catalog | None = None,
        nfs: nfsdisks.NFSDisks | None = None,
    ) -> None:
        self.layout = layout
        self.catalog = catalog
        self.nfs = nfs

    async def plan(
        self, machine: machines.MachineSpec, identity: domainxml.Identity
    ) -> list[disks.DiskPlan]:
        """:func:`disks.plan` with the backends the machine's disks name."""
        backends = await self.catalog.for_machine(machine) if self.catalog is not None else {}
        return disks.plan(machine, identity, self.layout, backends)

    async def resolved(self, machine: machines.MachineSpec) -> machines.MachineSpec:
        """:func:`disks.with_backends` with the backends the machine's disks name (what a
        migration's source decides block copy on)."""
        if self.catalog is None:
            return machine
        return disks.with_backends(machine, await self.catalog.for_machine(machine))

    async def ensure(self, disk: disks.DiskPlan) -> bool:
        """Make the disk unless it is there; True when it was made now."""
        if disk.nfs is None:
            return await disks.ensure(disk)
        if self.nfs is None:
            raise disks.DiskError(
                conditions.Reason.STORAGE_FAILED,
                f"disk {disk.name!r} is on NFS and this agent was started without NFS support",
            )
        return await self.nfs.ensure(disk)

    async def remove(self, plans: list[disks.DiskPlan]) -> list[str]:
        """Delete what deleting the VM deletes (:func:`disks.deletable`,
        :func:`disks.deletable_nfs`); return what went."""
        removed = [
            str(p)
            for p in await asyncio.to_thread(disks.remove, disks.deletable(plans, self.layout))
        ]
        remote = disks.deletable_nfs(plans)
        if remote and self.nfs is not None:
            removed += await self.nfs.remove(remote)
        return removed
