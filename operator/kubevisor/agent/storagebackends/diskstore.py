"""A VM's disks on whatever holds them — node files or an NFS backend — behind one face,
so a VM pass (or a migration target) plans, makes and deletes disks without asking where
each one lives. The rules stay where they are: :mod:`kubevisor.agent.disks` plans (pure)
and makes node files; :mod:`.nfsdisks` makes and deletes images on an export.
"""

from __future__ import annotations

import asyncio
import dataclasses

from kubevisor.agent import diskfiles, disks, domainxml
from kubevisor.agent.kube import objects
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, secrets
from kubevisor.agent.storagebackends import catalog as backendcatalog
from kubevisor.agent.storagebackends import nfsdisks
from kubevisor.api import conditions, machines


class DiskStore:
    """``catalog``: the StorageBackends known here (None: no disk may name one);
    ``nfs``: the node's NFS hand (None: an NFS disk is refused with StorageFailed);
    ``chap``: reads an iSCSI backend's CHAP Secret and hands its password to libvirt."""

    def __init__(
        self,
        layout: disks.Layout,
        catalog: backendcatalog.Catalog | None = None,
        nfs: nfsdisks.NFSDisks | None = None,
        chap: CHAP | None = None,
    ) -> None:
        self.layout = layout
        self.catalog = catalog
        self.nfs = nfs
        self.chap = chap

    async def plan(
        self, machine: machines.MachineSpec, identity: domainxml.Identity
    ) -> list[disks.DiskPlan]:
        """:func:`disks.plan` with the backends the machine's disks name; a LUN behind
        CHAP gets its user, and libvirt its password, from the backend's Secret."""
        backends = await self.catalog.for_machine(machine) if self.catalog is not None else {}
        plans = disks.plan(machine, identity, self.layout, backends)
        out = []
        for p in plans:
            ref = backends[p.iscsi.backend].iscsi if p.iscsi is not None else None
            if p.iscsi is not None and ref is not None and ref.chap_secret_ref is not None:
                if self.chap is None:
                    raise disks.DiskError(
                        conditions.Reason.STORAGE_FAILED,
                        f"disk {p.name!r}: StorageBackend {p.iscsi.backend!r} needs CHAP and "
                        "this agent cannot read Secrets",
                    )
                user = await self.chap.login(p.iscsi.backend, ref.chap_secret_ref.name)
                p = dataclasses.replace(p, iscsi=dataclasses.replace(p.iscsi, username=user))
            out.append(p)
        return out

    async def resolved(self, machine: machines.MachineSpec) -> machines.MachineSpec:
        """:func:`disks.with_backends` with the backends the machine's disks name (what a
        migration's source decides block copy on)."""
        if self.catalog is None:
            return machine
        return disks.with_backends(machine, await self.catalog.for_machine(machine))

    async def ensure(self, disk: disks.DiskPlan) -> bool:
        """Make the disk unless it is there; True when it was made now (a LUN is the
        SAN's: never made, so never True)."""
        if disk.iscsi is not None:
            return False
        if disk.nfs is None:
            return await diskfiles.ensure(disk)
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
            for p in await asyncio.to_thread(diskfiles.remove, disks.deletable(plans, self.layout))
        ]
        remote = disks.deletable_nfs(plans)
        if remote and self.nfs is not None:
            removed += await self.nfs.remove(remote)
        return removed


class CHAP:
    """An iSCSI backend's CHAP credentials: the Secret ``<namespace>/<name>`` (keys
    ``username``, ``password``; the namespace is the agent's, where its Lease lives) read
    at each disk plan, the password handed to libvirt as the secret
    :func:`disks.chap_secret_usage` names — never written into the domain XML."""

    def __init__(self, secrets: objects.Secrets, hypervisor: Hypervisor, namespace: str) -> None:
        self.secrets = secrets
        self.hv = hypervisor
        self.namespace = namespace

    async def login(self, backend: str, secret: str) -> str:
        """The CHAP user; the password is in libvirt's secret for ``backend`` after it."""
        where = f"CHAP Secret {self.namespace}/{secret} of StorageBackend {backend!r}"
        try:
            user = await self.secrets.read(self.namespace, secret, "username")
            password = await self.secrets.read(self.namespace, secret, "password")
        except objects.SecretNotFound as exc:
            raise disks.DiskError(conditions.Reason.SECRET_NOT_FOUND, f"{where}: {exc}") from exc
        if not user or not password:
            raise disks.DiskError(
                conditions.Reason.SECRET_NOT_FOUND, f"{where} needs keys username and password"
            )
        try:
            await secrets.set_iscsi_secret(self.hv, disks.chap_secret_usage(backend), password)
        except HypervisorError as exc:
            raise disks.DiskError(conditions.Reason.STORAGE_FAILED, f"{where}: {exc}") from exc
        return user
