"""``kubevisor backup VM`` and ``kubevisor restore BACKUP --as NAME`` from a shell.

``backup`` creates a VMBackup (built with the api models) and follows it until it ends:
phase changes, the reason while it waits, a progress line from ``status.progress``
(redrawn in place on a terminal), then the figures (size, time, chain). ``restore``
creates a VirtualMachine whose ``spec.source.backup`` names the backup and follows it
until it runs (or says why not); ``restore BACKUP --in-place VM`` sets the VM's
``kubevisor.io/restore-from`` annotation and prints the controller's verdict (its
Restored condition: refused while the VM is not stopped). The rendering is pure (table-tested).
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from kubevisor.api import conditions, groups, kinds, vmbackups
from kubevisor.cli import following, rendering

BACKUP = kinds.VMBACKUP
VM = kinds.VIRTUALMACHINE
POLL_SECONDS = 0.5


class BackupFailed(Exception):
    """The VMBackup (or the restored VM) ended without success (reason and message)."""


def backup_body(
    vm: str,
    namespace: str,
    *,
    mode: vmbackups.BackupMode = vmbackups.BackupMode.FULL,
    target: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The VMBackup to create (pure but for the generated name suffix)."""
    spec = vmbackups.VMBackupSpec(vm_name=vm, mode=mode, target=vmbackups.BackupTarget(path=target))
    return {
        "apiVersion": groups.API_VERSION,
        "kind": BACKUP.kind,
        "metadata": {"name": name or f"{vm}-{secrets.token_hex(3)}", "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def restore_body(backup: str, name: str, namespace: str) -> dict[str, Any]:
    """The VirtualMachine a restore creates (pure)."""
    return {
        "apiVersion": groups.API_VERSION,
        "kind": VM.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"runStrategy": "Always", "source": {"backup": {"name": backup}}},
    }


def progress_line(progress: Mapping[str, Any], *, width: int = 30) -> str:
    """``[#####.....]  42%  37/88 MiB`` from ``status.progress`` (pure)."""
    p = vmbackups.BackupProgress.model_validate(progress)
    line = following.bar(p.percent, width=width)
    if p.total_bytes:
        line += f"  {p.done_bytes / 1024**2:.0f}/{p.total_bytes / 1024**2:.0f} MiB"
    return line


def figures(name: str, status: Mapping[str, Any]) -> str:
    """The final line of a finished backup (pure)."""
    parts = [f"{status.get('phase')}: vmbackup/{name} on {status.get('nodeName')}"]
    if status.get("sizeBytes") is not None:
        parts.append(f"{status['sizeBytes'] / 1024**2:.1f} MiB written")
    if status.get("durationMs") is not None:
        parts.append(f"in {status['durationMs']} ms")
    chain = status.get("chain") or {}
    if chain.get("previous"):
        parts.append(f"incremental on {chain['previous']} (chain of {chain.get('length')})")
    if status.get("directory"):
        parts.append(f"at {status['directory']}")
    return ", ".join(parts)


def why(status: Mapping[str, Any]) -> str:
    """``reason: message`` of the Ready condition (pure)."""
    cond = conditions.get_condition(list(status.get("conditions") or []), "Ready")
    if cond is None:
        return str(status.get("phase") or "Pending")
    return f"{cond.get('reason')}: {cond.get('message') or ''}".rstrip(": ")


def _waiting(status: Mapping[str, Any]) -> str | None:
    """Why a Pending backup waits, once the controller has said (its Ready condition)."""
    return why(status) if status.get("conditions") else None


def follow(
    get: Callable[[], Mapping[str, Any] | None],
    *,
    out: TextIO,
    tty: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """Poll the VMBackup until it ends; its final status."""
    shown = following.Follower(out, tty=tty, why=_waiting, progress_line=progress_line)
    while True:
        obj = get()
        if obj is None:
            raise BackupFailed("the VMBackup was deleted")
        status = obj.get("status") or {}
        shown.show(status)
        if status.get("phase") in {p.value for p in vmbackups.FINAL_PHASES}:
            shown.end_line()
            return status
        sleep(POLL_SECONDS)


def backup(
    api: Any,
    vm: str,
    namespace: str,
    *,
    mode: vmbackups.BackupMode,
    target: str | None,
    name: str | None,
    wait: bool,
    out: TextIO = sys.stdout,
) -> rendering.Done:
    """Create the VMBackup and (with ``wait``) follow it, progress on ``out``; the
    VMBackup as it ended and its final figures."""
    body = backup_body(vm, namespace, mode=mode, target=target, name=name)
    created = body["metadata"]["name"]
    made: Mapping[str, Any] = api.create_namespaced_custom_object(
        groups.GROUP, groups.VERSION, namespace, BACKUP.plural, body
    )
    if not wait:
        return rendering.Done(made, f"vmbackup/{created} created")
    print(f"vmbackup/{created} created", file=out, flush=True)

    def get() -> Mapping[str, Any] | None:
        obj: Mapping[str, Any] = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, BACKUP.plural, created
        )
        return obj

    status = follow(get, out=out, tty=out.isatty())
    if status.get("phase") != vmbackups.VMBackupPhase.SUCCEEDED.value:
        raise BackupFailed(f"{status.get('phase')}: {why(status)}")
    return rendering.Done(get() or made, figures(created, status))


def restore(
    api: Any,
    backup_name: str,
    name: str,
    namespace: str,
    *,
    wait: bool,
    timeout: float,
    out: TextIO = sys.stdout,
) -> rendering.Done:
    """Create the restored VM and (with ``wait``) follow it until it runs, progress on
    ``out``; the VM."""
    made: Mapping[str, Any] = api.create_namespaced_custom_object(
        groups.GROUP,
        groups.VERSION,
        namespace,
        VM.plural,
        restore_body(backup_name, name, namespace),
    )
    if not wait:
        return rendering.Done(made, f"virtualmachine/{name} created from vmbackup/{backup_name}")
    print(f"virtualmachine/{name} created from vmbackup/{backup_name}", file=out, flush=True)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        obj = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, VM.plural, name
        )
        st = obj.get("status") or {}
        phase = st.get("phase") or "Pending"
        ready = conditions.get_condition(list(st.get("conditions") or []), "Ready")
        shown = f"phase {phase}" + (f" ({why(st)})" if ready is not None else "")
        if shown != last:
            print(f"  {shown}", file=out, flush=True)
            last = shown
        if phase == "Running":
            node = st.get("nodeName")
            said = f"Running: virtualmachine/{name} on {node}, restored from {backup_name}"
            return rendering.Done(obj, said)
        if phase == "Failed":
            raise BackupFailed(why(st))
        if time.monotonic() > deadline:
            raise BackupFailed(f"not Running after {timeout:.0f} s: {why(st)}")
        time.sleep(POLL_SECONDS)


#: Restored reasons that refuse a restore in place (the annotation is removed again).
REFUSED = frozenset({"VMNotStopped", "SourceNotFound", "InvalidSpec"})


def restored_verdict(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, sentence) of a VM's Restored condition once the controller wrote one (pure)."""
    cond = conditions.get_condition(list(status.get("conditions") or []), "Restored")
    if cond is None or not cond.get("reason"):
        return None
    return str(cond["reason"]), str(cond.get("message") or "")


def restore_in_place(
    api: Any, backup_name: str, vm: str, namespace: str, *, timeout: float
) -> rendering.Done:
    """Ask for ``vm``'s disks to be restored from ``backup_name`` and wait for the
    controller's verdict; BackupFailed (annotation removed) when it refuses."""

    def annotate(value: str | None) -> None:
        api.patch_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, VM.plural, vm,
            {"metadata": {"annotations": {groups.ANNOTATION_RESTORE: value}}},
        )  # fmt: skip

    annotate(backup_name)
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, VM.plural, vm
        )
        verdict = restored_verdict(obj.get("status") or {})
        if verdict is not None:
            reason, message = verdict
            if reason in REFUSED:
                annotate(None)
                raise BackupFailed(f"{reason}: {message}")
            return rendering.Done(obj, f"virtualmachine/{vm}: {reason}: {message}")
        if time.monotonic() > deadline:
            raise BackupFailed(f"no verdict on the restore after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)
