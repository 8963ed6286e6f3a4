"""The backup's files: offline copies, chain rebasing, checksums and the manifest.

A backup is written into its staging directory (``vmbackups.staging_dir``) and renamed to
its final directory only once every disk is complete and checksummed, with a manifest
(``backup.json``) last: a final directory with a manifest is a complete backup, anything
else is not. A failure removes the staging directory only; the previous backups'
directories are never written to (an Incremental only names the previous copy as its
backing file, in its own file's header).

qemu-img runs as a subprocess (asyncio, no thread needed); hashing runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubevisor.agent import diskfiles, disks
from kubevisor.api import vmbackups

logger = logging.getLogger(__name__)

MANIFEST = "backup.json"


class CopyError(RuntimeError):
    """A copy step failed; ``reason`` is a ``vmbackups.BackupReason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _run(*args: str) -> str:
    """``diskfiles.run_command``, its failure read as this backup's failure."""
    try:
        return await diskfiles.run_command(*args)
    except disks.DiskError as exc:
        raise CopyError(vmbackups.BackupReason.BACKUP_FAILED, str(exc)) from exc


def prepare_staging(target: Path, staging: Path, *, create_target: bool) -> None:
    """An empty staging directory under the target (raises TargetUnavailable). The target
    itself is created only when ``create_target`` (a relative target: our own area under
    the storage root); an absolute one (a NAS mount point) must exist."""
    if create_target:
        with contextlib.suppress(OSError):
            target.mkdir(parents=True, exist_ok=True)
    if not target.is_dir():
        raise CopyError(
            vmbackups.BackupReason.TARGET_UNAVAILABLE,
            f"the backup target {target} does not exist on this node (or is not a"
            " directory); nothing was written and no earlier backup was touched.",
        )
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise CopyError(
            vmbackups.BackupReason.TARGET_UNAVAILABLE,
            f"cannot write under the backup target {target}: {exc.strerror}",
        ) from exc


async def convert(source: Path, dest: Path) -> None:
    """A standalone qcow2 copy of a stopped VM's disk (an overlay is flattened). No -U:
    if QEMU starts the VM meanwhile, one of the two fails on the image lock instead of
    the copy reading a disk that is being written."""
    await _run("qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(dest))


async def rebase_onto(path: Path, backing: str) -> None:
    """Point an incremental copy's backing file at the previous copy (header only: the
    unallocated clusters are exactly the unchanged ones)."""
    await _run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def sha256(path: Path) -> str:
    """SHA-256 of a file, computed in a thread."""
    return await asyncio.to_thread(_sha256, path)


async def size_and_sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256) of a file, read in a thread."""
    return await asyncio.to_thread(lambda: (path.stat().st_size, _sha256(path)))


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


async def describe(staging: Path, final: Path, names: Sequence[str]) -> list[vmbackups.BackupDisk]:
    """The disks as they will be once renamed to ``final``: path, size, checksum.

    Each copy is flushed to stable storage while it is hashed: the flush waits on the
    device, the hash on the CPU (reading the page cache), so overlapping them saves the
    shorter of the two (``commit`` flushes again, by then a no-op)."""
    out = []
    for name in names:
        path = Path(vmbackups.disk_file(str(staging), name))
        (size, digest), _ = await asyncio.gather(
            size_and_sha256(path), asyncio.to_thread(_fsync, path)
        )
        out.append(
            vmbackups.BackupDisk(
                name=name,
                path=vmbackups.disk_file(str(final), name),
                size_bytes=size,
                sha256=digest,
            )
        )
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(staging: Path, final: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, then rename staging to final (atomic on one file system)."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for f in staging.iterdir():
        _fsync(f)
    if final.exists():
        raise CopyError(
            vmbackups.BackupReason.BACKUP_FAILED,
            f"{final} exists already and is not this backup's; it was left alone.",
        )
    staging.rename(final)
    _fsync_dir(final.parent)


def read_manifest(final: Path) -> dict[str, Any] | None:
    """The manifest of a complete backup directory, None when incomplete or unreadable."""
    try:
        data = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_backup(directory: Path, disk_names: Sequence[str]) -> list[Path]:
    """Remove a backup's own files (its disks and manifest) and then its directory if
    empty; nothing else. Returns what went."""
    removed = []
    for path in [Path(vmbackups.disk_file(str(directory), n)) for n in disk_names] + [
        directory / MANIFEST
    ]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    with contextlib.suppress(OSError):
        directory.rmdir()
    return removed


def remove_staging(staging: Path) -> None:
    """Remove the staging directory of a failed or abandoned attempt."""
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
