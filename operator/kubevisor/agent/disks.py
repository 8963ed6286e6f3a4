"""A VM's disk files: where they live, how they are made, and which ones may be deleted.

Layout: ``<root>/<namespace>/<vm name>/<disk name>.qcow2`` where root is
``<state-dir>/disks`` (storage: local) or ``<shared-dir>/disks`` (storage: shared, the
same path on every node, so a live migration needs no block copy). A path is a pure
function of (namespace, VM name, disk name), so a restarted agent, or the target of a
migration, finds the same files without remembering anything.

Making them (qemu-img) is :mod:`kubevisor.agent.diskfiles`; this module plans (pure).

Clones: an image ``vm:<namespace>/<vm>/<disk>`` (docs/architecture.md, "Clones") is the
file of another VM's disk at this node's layout path for that VM (same ``storage`` as the
clone's disk, so a shared disk is found in the shared dir, a local one only on its node).
It is copied with ``qemu-img convert -U -O qcow2``: the copy is *flattened* — a standalone
image that does not point at the source's overlay nor at the source's base image — so the
clone survives the source's deletion and a later change of the base image, at the price
of copying the base's data once. ``-U`` (force-share) lets us read an image QEMU holds
open; consistency for a running source (suspend, copy, resume) is the caller's job
(:mod:`kubevisor.agent.vms.cloning`). The source file is only ever read: it is never a
copy target, and it is never on a clone's deletable list.

Deleting: only files inside our roots, at the layout path of this VM, never a base image,
never a disk marked ``retain``.

StorageBackends (docs/storage.md): a disk naming a backend of type ``local`` or ``shared``
is planned as that ``storage``; one on an ``nfs`` backend is the file
``<namespace>.<vm name>.<disk name>.qcow2`` in the export's root (:func:`nfs_file_name`,
unambiguous: namespace and disk names are DNS labels without dots), opened by QEMU's own
NFS client (:class:`NFSFile`). Files in the export's root because QEMU's client takes an
``nfs://`` URL's last path part as the file and the rest as the export to mount. A linked
clone's base is node-local, at the same path on every node. A disk on an ``iscsi``
backend is the whole LUN (:class:`ISCSILun`, raw), never made, never deleted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

from kubevisor.agent import domainxml
from kubevisor.api import conditions, machines, quantities, storagebackends

logger = logging.getLogger(__name__)

#: Image prefix naming another VM's disk: ``vm:<namespace>/<vm name>/<disk name>``.
VM_IMAGE_PREFIX = "vm:"


class DiskError(RuntimeError):
    """A disk could not be prepared; ``reason`` is a condition reason (e.g. ImageNotFound)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Layout:
    """Directories of the node: disks, base images, shared storage (optional)."""

    state_dir: Path
    image_dir: Path
    shared_dir: Path | None = None

    def root(self, storage: machines.StorageKind) -> Path:
        """Directory holding VM disks of that storage kind."""
        if storage == "shared":
            if self.shared_dir is None:
                raise DiskError(
                    "InvalidSpec", "disk asks for shared storage but this node has none"
                )
            return self.shared_dir / "disks"
        return self.state_dir / "disks"


@dataclasses.dataclass(frozen=True)
class NFSFile:
    """A disk image in the root of an NFS export, as QEMU's client and libnfs address it."""

    server: str
    export: str
    """The export's path on the server (NFSv3: its real directory)."""
    name: str
    """File name in the export's root."""

    @property
    def url(self) -> str:
        """``nfs://server/export/name``: what ``qemu-img`` opens."""
        return f"nfs://{self.server}/{self.export.strip('/')}/{self.name}"

    @property
    def source(self) -> domainxml.NetworkSource:
        """What the domain XML needs (libvirt builds the same URL from it)."""
        return domainxml.NetworkSource(
            protocol="nfs", host=self.server, name=f"/{self.export.strip('/')}/{self.name}"
        )


@dataclasses.dataclass(frozen=True)
class ISCSILun:
    """A whole SCSI LUN on an iSCSI target, opened by QEMU's client (libiscsi)."""

    portal: str
    port: int
    iqn: str
    lun: int
    backend: str
    """The StorageBackend's name: the libvirt secret holding its CHAP password is named
    after it (:func:`chap_secret_usage`)."""
    username: str | None = None
    """The CHAP user, once read from the backend's Secret (None: no CHAP)."""

    @property
    def source(self) -> domainxml.NetworkSource:
        return domainxml.NetworkSource(
            protocol="iscsi",
            host=self.portal,
            port=self.port,
            name=f"{self.iqn}/{self.lun}",
            username=self.username,
            secret_usage=chap_secret_usage(self.backend) if self.username else None,
        )


def chap_secret_usage(backend: str) -> str:
    """The libvirt secret (usage type iscsi) holding a backend's CHAP password (pure)."""
    return f"kubevisor-iscsi-{backend}"


def nfs_file_name(identity: domainxml.Identity, disk_name: str) -> str:
    """The VM's disk file in an export's root (pure): ``<namespace>.<vm>.<disk>.qcow2``."""
    return f"{identity.namespace}.{identity.name}.{disk_name}.qcow2"


@dataclasses.dataclass(frozen=True)
class DiskPlan:
    """One disk file to make (or find) for a VM."""

    name: str
    path: Path
    base: Path | None
    clone: machines.CloneMode
    size_bytes: int | None
    retain: bool
    bus: machines.DiskBus
    source_vm: domainxml.Identity | None = None
    """Set for a clone's disk (image ``vm:...``): the VM whose disk ``base`` is. Its uid is
    unknown here (empty); ``source_vm.domain_name`` is what the caller suspends."""
    nfs: NFSFile | None = None
    """Set for a disk on an NFS backend: the image is there (``path`` only names it in
    logs), made and deleted over the network, never with the node's file calls."""
    iscsi: ISCSILun | None = None
    """Set for a disk on an iSCSI backend: the whole LUN, raw; nothing is made or deleted
    (a LUN is the SAN's, not ours)."""
    device: machines.DiskDevice = "disk"


@dataclasses.dataclass(frozen=True)
class VMImage:
    """A parsed ``vm:<namespace>/<vm>/<disk>`` image reference."""

    namespace: str
    name: str
    disk: str

    @property
    def identity(self) -> domainxml.Identity:
        return domainxml.Identity(namespace=self.namespace, name=self.name, uid="")


def parse_vm_image(image: str) -> VMImage | None:
    """The source VM disk an image names, None for an ordinary image (pure).

    Raises DiskError(InvalidSpec) for a malformed ``vm:`` reference: each part must be a
    plain name, so the path built from it cannot leave the disk root.
    """
    if not image.startswith(VM_IMAGE_PREFIX):
        return None
    parts = image[len(VM_IMAGE_PREFIX) :].split("/")
    if len(parts) != 3 or any(not p or p in (".", "..") or "\x00" in p for p in parts):
        raise DiskError(
            "InvalidSpec", f"image {image!r}: expected vm:<namespace>/<vm name>/<disk name>"
        )
    return VMImage(namespace=parts[0], name=parts[1], disk=parts[2])


def vm_disk_path(layout: Layout, ref: VMImage, storage: machines.StorageKind) -> Path:
    """Where the source VM's disk lives on this node (pure, same layout as ``disk_path``)."""
    return layout.root(storage) / ref.namespace / ref.name / f"{ref.disk}.qcow2"


def resolve_image(image: str, image_dir: Path) -> Path | None:
    """An absolute path as is; a name as ``<dir>/<name>``, ``<dir>/<name>.qcow2`` or
    ``<dir>/<name>/<name>.qcow2`` (first that exists). None when nothing exists."""
    if image.startswith("/"):
        path = Path(image)
        return path if path.is_file() else None
    for candidate in (
        image_dir / image,
        image_dir / f"{image}.qcow2",
        image_dir / image / f"{image}.qcow2",
    ):
        if candidate.is_file():
            return candidate
    return None


def disk_path(layout: Layout, identity: domainxml.Identity, disk: machines.Disk) -> Path:
    """Where ``disk`` of the VM lives (pure)."""
    return layout.root(disk.storage) / identity.namespace / identity.name / f"{disk.name}.qcow2"


def local_disk_targets(machine: machines.MachineSpec) -> list[str]:
    """Target device names (``vda``...) of the machine's node-local disks, numbered
    as the domain XML numbers them (``domainxml.target_devs``, pure): the disks a
    migration must block-copy."""
    devs = domainxml.target_devs([disk.bus for disk in machine.disks])
    return [dev for disk, dev in zip(machine.disks, devs, strict=True) if _copied(disk)]


def _copied(disk: machines.Disk) -> bool:
    """A disk a migration block-copies: node-local, not on a StorageBackend (an NFS or
    shared backend is the same bytes on every node reaching it). Pass the machine through
    :func:`with_backends` first, so a disk on a ``local`` backend counts as node-local."""
    return disk.storage != "shared" and disk.backend is None


def with_backends(
    machine: machines.MachineSpec, backends: Mapping[str, storagebackends.StorageBackendSpec]
) -> machines.MachineSpec:
    """The machine with each disk on a ``local`` / ``shared`` backend rewritten as that
    ``storage`` and no backend (pure): what those backends mean on a node. Disks on other
    or unknown backends stay as they are."""
    out = []
    for disk in machine.disks:
        spec = backends.get(disk.backend) if disk.backend is not None else None
        if spec is not None and spec.type in ("local", "shared"):
            disk = disk.model_copy(update={"storage": spec.type, "backend": None})
        out.append(disk)
    return machine.model_copy(update={"disks": out})


def block_copy_paths(
    machine: machines.MachineSpec,
    identity: domainxml.Identity,
    source: Layout,
    target_state_dir: Path,
) -> dict[str, str]:
    """Source path -> destination path of every node-local disk of the VM, for block copy
    to a node whose state directory is ``target_state_dir`` (pure). The destination is
    the target's own layout path, so the target agent, planning with its own layout,
    prepares exactly the file the copy fills; shared disks keep their path."""
    target = dataclasses.replace(source, state_dir=target_state_dir)
    return {
        str(disk_path(source, identity, disk)): str(disk_path(target, identity, disk))
        for disk in machine.disks
        if _copied(disk)
    }


def backend_disk(
    disk: machines.Disk, backends: Mapping[str, storagebackends.StorageBackendSpec]
) -> tuple[machines.Disk, storagebackends.NFSSource | storagebackends.ISCSISource | None]:
    """The disk as planned on its backend (pure): a ``local`` / ``shared`` backend is that
    ``storage``; an ``nfs`` or ``iscsi`` one also returns its source. Raises DiskError
    for a backend this node does not know (deleted since placement)."""
    if disk.backend is None:
        return disk, None
    spec = backends.get(disk.backend)
    if spec is None:
        raise DiskError(
            conditions.Reason.STORAGE_FAILED,
            f"disk {disk.name!r}: StorageBackend {disk.backend!r} does not exist",
        )
    if spec.type in ("local", "shared"):
        return disk.model_copy(update={"storage": spec.type}), None
    if spec.type == "nfs" and spec.nfs is not None:
        return disk, spec.nfs
    if spec.type == "iscsi" and spec.iscsi is not None:
        return disk, spec.iscsi
    raise DiskError(  # the API server refuses such a backend; an agent never guesses
        conditions.Reason.INVALID_SPEC,
        f"disk {disk.name!r}: StorageBackend {disk.backend!r} has no {spec.type} fields",
    )


def plan(
    machine: machines.MachineSpec,
    identity: domainxml.Identity,
    layout: Layout,
    backends: Mapping[str, storagebackends.StorageBackendSpec] | None = None,
) -> list[DiskPlan]:
    """The disk files of a VM, base images resolved. Raises DiskError(ImageNotFound).

    ``backends``: the StorageBackends this node knows, by name (a disk naming one that is
    not there is refused with StorageFailed)."""
    plans = []
    for spec_disk in machine.disks:
        disk, on = backend_disk(spec_disk, backends or {})
        if isinstance(on, storagebackends.ISCSISource):
            plans.append(_lun_plan(disk, on))
            continue
        if on is not None:
            plans.append(_nfs_plan(disk, on, identity, layout))
            continue
        path = disk_path(layout, identity, disk)
        ref = parse_vm_image(disk.image) if disk.image is not None else None
        if ref is not None:
            source = vm_disk_path(layout, ref, disk.storage)
            if source == path:
                raise DiskError("InvalidSpec", f"disk {disk.name!r} is a clone of itself")
            if path.exists():
                # Copied already: the source is not needed again (it may even be gone).
                plans.append(_plan(disk, path, None, source_vm=ref.identity))
                continue
            if not source.is_file():
                raise DiskError(
                    "ImageNotFound",
                    f"disk {disk.name!r}: clone source disk {disk.image!r} not found at "
                    f"{source} on this node",
                )
            plans.append(_plan(disk, path, source, source_vm=ref.identity))
            continue
        plans.append(_plan(disk, path, _base_image(disk, layout)))
    return plans


def _base_image(disk: machines.Disk, layout: Layout) -> Path | None:
    """The node-local base image a disk is made from (None: an empty disk of its size).
    Raises DiskError when the image is not on this node, or neither is given (pure)."""
    if disk.image is None:
        if disk.size is None:
            raise DiskError("InvalidSpec", f"disk {disk.name!r} has neither image nor size")
        return None
    base = resolve_image(disk.image, layout.image_dir)
    if base is None:
        raise DiskError(
            "ImageNotFound",
            f"disk {disk.name!r}: base image {disk.image!r} not found "
            f"(looked in {layout.image_dir})",
        )
    return base


def _nfs_plan(
    disk: machines.Disk,
    nfs: storagebackends.NFSSource,
    identity: domainxml.Identity,
    layout: Layout,
) -> DiskPlan:
    """A disk that is an image in an NFS export's root; its base is node-local (pure)."""
    if disk.image is not None and parse_vm_image(disk.image) is not None:
        raise DiskError(
            "InvalidSpec",
            f"disk {disk.name!r}: a clone of another VM's disk cannot be made on "
            f"StorageBackend {disk.backend!r} (nfs) yet",
        )
    remote = NFSFile(nfs.server, str(nfs.export), nfs_file_name(identity, disk.name))
    base = _base_image(disk, layout)
    return dataclasses.replace(_plan(disk, Path(nfs.export) / remote.name, base), nfs=remote)


def _lun_plan(disk: machines.Disk, source: storagebackends.ISCSISource) -> DiskPlan:
    """A disk that is a whole LUN: what the LUN holds is the disk, so there is no base to
    clone and no size to give (pure)."""
    if disk.image is not None:
        raise DiskError(
            "InvalidSpec",
            f"disk {disk.name!r} is a whole LUN on StorageBackend {disk.backend!r}: a LUN "
            "has no backing file, so it cannot be a clone of an image; leave image unset",
        )
    assert disk.backend is not None
    lun = ISCSILun(source.portal, source.port, source.iqn, source.lun, backend=disk.backend)
    return DiskPlan(
        name=disk.name,
        path=Path("iscsi") / source.iqn / str(source.lun),
        base=None,
        clone=disk.clone,
        size_bytes=None,
        retain=disk.retain,
        bus=disk.bus,
        iscsi=lun,
        device=disk.device,
    )


def _plan(
    disk: machines.Disk,
    path: Path,
    base: Path | None,
    *,
    source_vm: domainxml.Identity | None = None,
) -> DiskPlan:
    return DiskPlan(
        name=disk.name,
        path=path,
        base=base,
        clone="full" if source_vm is not None else disk.clone,
        size_bytes=quantities.to_bytes(disk.size) if disk.size is not None else None,
        retain=disk.retain,
        bus=disk.bus,
        source_vm=source_vm,
    )


def clone_sources(plans: list[DiskPlan]) -> list[domainxml.Identity]:
    """Source VMs whose disks still have to be copied (each once, in plan order)."""
    seen: list[domainxml.Identity] = []
    for p in plans:
        if p.source_vm is not None and p.base is not None and p.source_vm not in seen:
            seen.append(p.source_vm)
    return seen


def placements(plans: list[DiskPlan]) -> tuple[domainxml.DiskPlacement, ...]:
    """What the domain XML needs from the plans."""
    return tuple(_placement(p) for p in plans)


def _placement(p: DiskPlan) -> domainxml.DiskPlacement:
    if p.iscsi is not None:
        return domainxml.DiskPlacement(
            name=p.name, path=p.path, bus=p.bus, format="raw", device=p.device,
            network=p.iscsi.source,
        )  # fmt: skip
    return domainxml.DiskPlacement(
        name=p.name, path=p.path, bus=p.bus, network=p.nfs.source if p.nfs else None
    )


def deletable(plans: list[DiskPlan], layout: Layout) -> list[Path]:
    """Files that deleting the VM removes: not retained, inside our roots, not a base
    (NFS images are :func:`deletable_nfs`)."""
    roots = [layout.state_dir / "disks"]
    if layout.shared_dir is not None:
        roots.append(layout.shared_dir / "disks")
    bases = {p.base for p in plans if p.base is not None}
    result = []
    for p in plans:
        if p.retain or p.path in bases or p.nfs is not None or p.iscsi is not None:
            continue
        if (
            p.source_vm is not None
            and p.path.parent.name == p.source_vm.name
            and (p.path.parent.parent.name == p.source_vm.namespace)
        ):
            continue  # would be the source's own directory: never ours to delete
        if not any(p.path.is_relative_to(root) for root in roots):
            continue
        if layout.image_dir in p.path.parents:
            continue
        result.append(p.path)
    return result


def deletable_nfs(plans: list[DiskPlan]) -> list[NFSFile]:
    """NFS images that deleting the VM removes: the VM's own, not retained (pure)."""
    return [p.nfs for p in plans if p.nfs is not None and not p.retain]
