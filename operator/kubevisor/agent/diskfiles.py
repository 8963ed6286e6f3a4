"""Making, replacing and removing a VM's disk files with ``qemu-img``, as
:mod:`kubevisor.agent.disks` planned them.

Making: linked = ``qemu-img create -f qcow2 -b BASE -F FMT`` (an overlay; the base image
is only read), full = ``qemu-img convert`` (an independent copy), no image = an empty
qcow2 of the given size; a clone of another VM's disk is a flattened ``convert -U``. An
existing file is never recreated (it holds the guest's data), and a file appears only
complete (written under a temporary name, then renamed). The same commands make an image
on an NFS export (``storagebackends.nfsdisks`` runs them in the node's namespace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubevisor.agent.disks import DiskError, DiskPlan

logger = logging.getLogger(__name__)


#: Runs one command (argv), returns its stdout; raises DiskError on failure.
Runner = Callable[..., Awaitable[str]]


async def run_command(*args: str, limit_s: float | None = None) -> str:
    """Run a command, return its stdout; DiskError with its stderr when it fails, or
    when it outlives ``limit_s`` seconds (then it is killed: a network disk's server
    that stopped answering must not hold a VM pass forever)."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DiskError("Failed", f"{' '.join(args)} gave no answer in {limit_s:.0f} s") from None
    if proc.returncode != 0:
        raise DiskError("Failed", f"{' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


async def image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size in bytes) of an image file."""
    info = json.loads(
        await run_command("qemu-img", "info", "--force-share", "--output=json", str(path))
    )
    return str(info["format"]), int(info["virtual-size"])


async def make_image(disk: DiskPlan, target: str, run: Runner = run_command) -> None:
    """Write the disk's image at ``target`` (a path, or an ``nfs://`` URL), running
    qemu-img through ``run`` (the node's network namespace for a network target). Bases
    are node files, read here with :func:`image_info`."""
    if disk.source_vm is not None and disk.base is not None:
        # Another VM's disk, possibly open in its QEMU: read-only, shared lock (-U).
        _, virtual = await image_info(disk.base)
        await run("qemu-img", "convert", "-q", "-U", "-O", "qcow2", str(disk.base), target)
        if (disk.size_bytes or 0) > virtual:
            await run("qemu-img", "resize", "-q", target, str(disk.size_bytes))
    elif disk.base is None:
        assert disk.size_bytes is not None
        await run("qemu-img", "create", "-q", "-f", "qcow2", target, str(disk.size_bytes))
    else:
        fmt, virtual = await image_info(disk.base)
        size = max(virtual, disk.size_bytes or 0)
        if disk.clone == "linked":
            await run(
                "qemu-img", "create", "-q", "-f", "qcow2",
                "-b", str(disk.base), "-F", fmt, target, str(size),
            )  # fmt: skip
        else:
            await run("qemu-img", "convert", "-q", "-O", "qcow2", str(disk.base), target)
            if size > virtual:
                await run("qemu-img", "resize", "-q", target, str(size))


def temporary_name(name: str) -> str:
    """The name an image is written under before it is renamed into place (pure)."""
    return f".{name}.tmp-{os.getpid()}"


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
        await run_command("qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(tmp))
        if await asyncio.to_thread(path.exists):
            await run_command("qemu-img", "info", str(path))  # fails on a locked (open) image
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def ensure(disk: DiskPlan) -> bool:
    """Create the file unless it exists; True when it was created now.

    The file appears only complete: it is written under a temporary name in the same
    directory and renamed, so a crash mid-copy never leaves a half disk that a later pass
    would take for the real one. (NFS disks: ``storagebackends.nfsdisks``.)
    """
    if disk.nfs is not None or disk.iscsi is not None:
        raise DiskError("InvalidSpec", f"disk {disk.name!r} is on a backend, not a node file")
    if disk.path.exists():
        return False
    if disk.base is not None and disk.path.resolve() == disk.base.resolve():
        raise DiskError("InvalidSpec", f"disk {disk.name!r}: refusing to overwrite its own source")
    disk.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = disk.path.with_name(temporary_name(disk.path.name))
    try:
        await make_image(disk, str(tmp))
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
