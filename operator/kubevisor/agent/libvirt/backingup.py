"""Live backups through libvirt's backup API (push mode), with checkpoints.

Pure builders for the ``<domainbackup>`` and ``<domaincheckpoint>`` XML, a pure reading
of the job statistics as progress, and thin async adapters: begin the backup (optionally
with the guest's file systems frozen through the guest agent for the instant it starts),
sample the job, read the completed job's outcome, abort, list and delete checkpoints.

How it works: ``virDomainBackupBegin`` fixes the point in time at once (QEMU starts a
copy-before-write job: a guest write to a block not copied yet copies the old block
first), then copies in the background while the guest runs. With a checkpoint XML,
libvirt creates a checkpoint at the same instant: a persistent dirty bitmap in each
qcow2 disk, so tracking starts without a restart. An Incremental names the previous
backup's checkpoint in ``<incremental>``: only the blocks written since are copied, to a
new qcow2 whose other clusters stay unallocated (the caller then points its backing file
at the previous copy, so the chain reads as the whole disk).

The job runs inside libvirtd/QEMU, not in our process: an agent restart finds it still
running (``active``) and follows it; the calls here are short, so they share one small
pool of their own (not the hypervisor's, which the VM loop needs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import libvirt

from kubevisor.agent.libvirt import hypervisor

T = TypeVar("T")

_calls = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="backup")

_ACTIVE: Final = frozenset({libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED})


class BackupError(hypervisor.HypervisorError):
    """A backup call failed; the message carries libvirt's text."""


class QuiesceError(BackupError):
    """The guest's file systems could not be frozen (no guest agent, say)."""


@dataclasses.dataclass(frozen=True)
class DiskTarget:
    """One domain disk and where its copy goes (``file`` None: not backed up)."""

    dev: str
    """Target device in the domain (``vda``)."""
    file: str | None


@dataclasses.dataclass(frozen=True)
class DomainDisk:
    """A disk of the running domain as its XML shows it."""

    dev: str
    source: str | None
    device: str
    """disk, cdrom, ..."""
    readonly: bool


def domain_disks(xml: str) -> list[DomainDisk]:
    """The domain's disks (pure)."""
    root = ET.fromstring(xml)
    out = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        source = disk.find("source")
        out.append(
            DomainDisk(
                dev=str(target.get("dev")),
                source=source.get("file") if source is not None else None,
                device=disk.get("device", "disk"),
                readonly=disk.find("readonly") is not None,
            )
        )
    return out


def backup_xml(targets: Sequence[DiskTarget], *, incremental: str | None) -> str:
    """The push-mode ``<domainbackup>``: each disk with a file is copied there as qcow2,
    the others are left out explicitly (pure)."""
    root = ET.Element("domainbackup", mode="push")
    if incremental is not None:
        ET.SubElement(root, "incremental").text = incremental
    disks = ET.SubElement(root, "disks")
    for t in targets:
        if t.file is None:
            ET.SubElement(disks, "disk", name=t.dev, backup="no")
            continue
        disk = ET.SubElement(disks, "disk", name=t.dev, backup="yes", type="file")
        ET.SubElement(disk, "target", file=t.file)
        ET.SubElement(disk, "driver", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def checkpoint_xml(name: str, targets: Sequence[DiskTarget]) -> str:
    """The ``<domaincheckpoint>`` created with the backup: a bitmap in every backed-up
    disk (pure)."""
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    disks = ET.SubElement(root, "disks")
    for t in targets:
        ET.SubElement(disks, "disk", name=t.dev, checkpoint="bitmap" if t.file else "no")
    return ET.tostring(root, encoding="unicode")


@dataclasses.dataclass(frozen=True)
class Sample:
    """A running backup job's figures."""

    done_bytes: int
    total_bytes: int | None


def sample(stats: Mapping[str, Any]) -> Sample:
    """Progress from libvirt's job statistics (pure). Backup jobs report
    ``disk_processed``/``disk_total``; ``data_*`` is the generic fallback."""
    done = stats.get("disk_processed", stats.get("data_processed", 0))
    total = stats.get("disk_total", stats.get("data_total"))
    return Sample(done_bytes=int(done or 0), total_bytes=int(total) if total else None)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a finished backup job ended."""

    succeeded: bool
    message: str
    total_bytes: int | None


def outcome(stats: Mapping[str, Any]) -> Outcome | None:
    """The completed job's outcome from ``jobStats(COMPLETED)``; None when libvirt keeps
    no completed backup job (pure)."""
    if stats.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
        return None
    kind = stats.get("type")
    total = stats.get("disk_total")
    if kind == libvirt.VIR_DOMAIN_JOB_COMPLETED:
        return Outcome(True, "", int(total) if total else None)
    if kind in (libvirt.VIR_DOMAIN_JOB_FAILED, libvirt.VIR_DOMAIN_JOB_CANCELLED):
        text = str(stats.get("errmsg") or "the backup job failed")
        return Outcome(False, text, None)
    return None


async def _run(fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_calls, functools.partial(fn, *args))
    except libvirt.libvirtError as exc:
        raise BackupError(str(exc.get_error_message() or exc)) from exc


async def disks_of(hv: hypervisor.Hypervisor, name: str) -> list[DomainDisk]:
    """The running domain's disks."""
    return domain_disks(await _run(lambda: str(hv.conn.lookupByName(name).XMLDesc(0))))


async def begin(
    hv: hypervisor.Hypervisor, name: str, backup: str, checkpoint: str, *, quiesce: bool
) -> None:
    """Start the push backup with its checkpoint. With ``quiesce`` the guest's file
    systems are frozen for the instant the backup starts and thawed right after (also
    when the start fails); a guest that cannot freeze raises :class:`QuiesceError`."""

    def run() -> None:
        dom = hv.conn.lookupByName(name)
        if quiesce:
            try:
                dom.fsFreeze()
            except libvirt.libvirtError as exc:
                raise QuiesceError(str(exc.get_error_message() or exc)) from exc
        try:
            dom.backupBegin(backup, checkpoint, 0)
        finally:
            if quiesce:
                dom.fsThaw()

    await _run(run)


async def active(hv: hypervisor.Hypervisor, name: str) -> Sample | None:
    """The running backup job's progress, None when no backup job runs on the domain."""

    def run() -> Sample | None:
        dom = hv.conn.lookupByName(name)
        stats = dict(dom.jobStats(0))
        if stats.get("type") not in _ACTIVE:
            return None
        if stats.get("operation") not in (None, libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP):
            return None
        return sample(stats)

    return await _run(run)


async def finished(hv: hypervisor.Hypervisor, name: str) -> Outcome | None:
    """The last completed backup job's outcome (None: libvirt keeps none)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    return outcome(await _run(lambda: dict(hv.conn.lookupByName(name).jobStats(flags))))


async def abort(hv: hypervisor.Hypervisor, name: str) -> None:
    """Abort the running backup job (its files are the caller's to remove)."""
    await _run(lambda: hv.conn.lookupByName(name).abortJob())


async def checkpoints(hv: hypervisor.Hypervisor, name: str) -> list[str]:
    """Names of the domain's checkpoints."""
    return await _run(
        lambda: [c.getName() for c in hv.conn.lookupByName(name).listAllCheckpoints(0)]
    )


async def delete_checkpoint(hv: hypervisor.Hypervisor, name: str, checkpoint: str) -> None:
    """Delete one checkpoint (libvirt merges its bitmap into its parent's, so what an
    older checkpoint tracks stays complete). Missing is fine."""

    def run() -> None:
        dom = hv.conn.lookupByName(name)
        try:
            dom.checkpointLookupByName(checkpoint, 0).delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise

    await _run(run)
