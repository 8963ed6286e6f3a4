"""A VM's disk files: where they live, how they are made, and which ones may be deleted.

Layout: ``<root>/<namespace>/<vm name>/<disk name>.qcow2`` where root is
``<state-dir>/disks`` (storage: local) or ``<shared-dir>/disks`` (storage: shared, the
same path on every node, so a live migration needs no block copy). A path is a pure
function of (namespace, VM name, disk name), so a restarted agent, or the target of a
migration, finds the same files without remembering anything.

Making: linked = ``qemu-img create -f qcow2 -b BASE -F FMT`` (an overlay; the base image
is only read), full = ``qemu-img convert`` (an independent copy), no image = an empty
qcow2 of the given size. An existing file is never recreated (it holds the guest's data).

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
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path

from kubevisor.agent import domainxml
from kubevisor.api import machines, quantities

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
    return [dev for disk, dev in zip(machine.disks, devs, strict=True) if disk.storage != "shared"]


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
        if disk.storage != "shared"
    }


def plan(
    machine: machines.MachineSpec, identity: domainxml.Identity, layout: Layout
) -> list[DiskPlan]:
    """The disk files of a VM, base images resolved. Raises DiskError(ImageNotFound)."""
    plans = []
    for disk in machine.disks:
        if disk.backend is not None:
            # Placement and migration already honour backends (the node reaches it); the
            # node side that opens a disk on one is not built yet (docs/storage.md).
            raise DiskError(
                "NotImplemented",
                f"disk {disk.name!r} names StorageBackend {disk.backend!r}: this agent does "
                "not open disks on a StorageBackend yet; use storage: local or shared",
            )
        base = None
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
        if disk.image is not None:
            base = resolve_image(disk.image, layout.image_dir)
            if base is None:
                raise DiskError(
                    "ImageNotFound",
                    f"disk {disk.name!r}: base image {disk.image!r} not found "
                    f"(looked in {layout.image_dir})",
                )
        if base is None and disk.size is None:
            raise DiskError("InvalidSpec", f"disk {disk.name!r} has neither image nor size")
        plans.append(_plan(disk, path, base))
    return plans


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
    return tuple(domainxml.DiskPlacement(name=p.name, path=p.path, bus=p.bus) for p in plans)


def deletable(plans: list[DiskPlan], layout: Layout) -> list[Path]:
    """Files that deleting the VM removes: not retained, inside our roots, not a base."""
    roots = [layout.state_dir / "disks"]
    if layout.shared_dir is not None:
        roots.append(layout.shared_dir / "disks")
    bases = {p.base for p in plans if p.base is not None}
    result = []
    for p in plans:
        if p.retain or p.path in bases:
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


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError("Failed", f"{' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


async def image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size in bytes) of an image file."""
    info = json.loads(await _run("qemu-img", "info", "--force-share", "--output=json", str(path)))
    return str(info["format"]), int(info["virtual-size"])


async def replace_from(path: Path, source: Path) -> None:
    """Make ``path`` a standalone copy of ``source`` (a backup's copy, read through its
    chain), for a restore in place. Written under a temporary name and renamed, so a
    crash leaves the old disk or the new one, never half of one. No ``-U``: the image
    lock refuses a disk some QEMU still has open."""
    if not await asyncio.to_thread(source.is_file):
        raise DiskError("ImageNotFound", f"the backup's copy {source} is not on this node")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.restore-{os.getpid()}")
    try:
        await _run("qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(tmp))
        if await asyncio.to_thread(path.exists):
            await _run("qemu-img", "info", str(path))  # fails on a locked (open) image
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def ensure(disk: DiskPlan) -> bool:
    """Create the file unless it exists; True when it was created now.

    The file appears only complete: it is written under a temporary name in the same
    directory and renamed, so a crash mid-copy never leaves a half disk that a later pass
    would take for the real one.
    """
    if disk.path.exists():
        return False
    if disk.base is not None and disk.path.resolve() == disk.base.resolve():
        raise DiskError("InvalidSpec", f"disk {disk.name!r}: refusing to overwrite its own source")
    disk.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = disk.path.with_name(f".{disk.path.name}.tmp-{os.getpid()}")
    try:
        if disk.source_vm is not None and disk.base is not None:
            # Another VM's disk, possibly open in its QEMU: read-only, shared lock (-U).
            _, virtual = await image_info(disk.base)
            await _run(
                "qemu-img", "convert", "-q", "-U", "-O", "qcow2", str(disk.base), str(tmp)
            )  # fmt: skip
            if (disk.size_bytes or 0) > virtual:
                await _run("qemu-img", "resize", "-q", str(tmp), str(disk.size_bytes))
        elif disk.base is None:
            assert disk.size_bytes is not None
            await _run("qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(disk.size_bytes))
        else:
            fmt, virtual = await image_info(disk.base)
            size = max(virtual, disk.size_bytes or 0)
            if disk.clone == "linked":
                await _run(
                    "qemu-img", "create", "-q", "-f", "qcow2",
                    "-b", str(disk.base), "-F", fmt, str(tmp), str(size),
                )  # fmt: skip
            else:
                await _run("qemu-img", "convert", "-q", "-O", "qcow2", str(disk.base), str(tmp))
                if size > virtual:
                    await _run("qemu-img", "resize", "-q", str(tmp), str(size))
        tmp.rename(disk.path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created disk %s (%s of %s)", disk.path, disk.clone, disk.base)
    return True


def remove(paths: list[Path]) -> list[Path]:
    """Delete the files (missing is fine) and empty VM directories; return what went."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break
    return removed
