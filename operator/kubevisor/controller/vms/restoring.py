"""Restore in place: the ``kubevisor.io/restore-from`` annotation on a VirtualMachine
asks for its own disks to be replaced by a VMBackup of it (pure judgement).

An annotation rather than a field or a kind: it is a one-shot request on an existing VM,
like ``kubevisor.io/restart``, and the VM's spec says what the VM *is*, not what was done
to it. (A new VM from a backup is ``spec.source.backup``.) Rules, in order:

1. No annotation: no Restored condition, no ``status.restore``.
2. Already restored (the agent's ``status.appliedRestore`` names it): Restored=True.
3. Already judged (``status.restore`` names it): kept as is — the agent acts on it
   before the domain next starts, so starting the VM meanwhile is safe.
4. The VMBackup does not exist or is not Succeeded: Restored=False ``SourceNotFound``.
5. It is a backup of another VM: Restored=False ``InvalidSpec`` (restore it as a new VM).
6. The VM is not stopped (a domain may run, or it is not asked to stay stopped):
   Restored=False ``VMNotStopped``, a Warning Event; nothing is changed.
7. Otherwise ``status.restore`` lists the backup's copies per disk; Restored=False
   ``RestorePending`` until the agent reports it done.
"""

from __future__ import annotations

from kubevisor.api import conditions, virtualmachines, vmbackups
from kubevisor.controller.vms.status import Cond

Reason = conditions.Reason


def judge(
    *,
    vm_name: str,
    annotation: str | None,
    backup: vmbackups.VMBackup | None,
    stopped: bool,
    current: virtualmachines.VMRestoreState | None,
    applied: str | None,
) -> tuple[Cond | None, virtualmachines.VMRestoreState | None]:
    """(the Restored condition, the status.restore to write) (module docstring)."""
    if annotation is None:
        return None, None
    if applied == annotation:
        done = Cond("True", Reason.SUCCEEDED, f"the disks were restored from VMBackup {annotation}")
        return done, current if current is not None and current.backup == annotation else None
    if current is not None and current.backup == annotation:
        return Cond(
            "False", Reason.RESTORE_PENDING,
            f"the disks are replaced from VMBackup {annotation} before the VM next starts",
        ), current  # fmt: skip
    st = backup.status if backup is not None else None
    if backup is None or st is None or st.phase is not vmbackups.VMBackupPhase.SUCCEEDED:
        why = "does not exist" if backup is None else "is not Succeeded"
        return Cond("False", Reason.SOURCE_NOT_FOUND, f"VMBackup {annotation} {why}"), None
    if backup.spec.vm_name != vm_name:
        return Cond(
            "False", Reason.INVALID_SPEC,
            f"VMBackup {annotation} is a backup of VM {backup.spec.vm_name}, not {vm_name};"
            " restore it as a new VM (spec.source.backup)",
        ), None  # fmt: skip
    if not stopped:
        return Cond(
            "False", Reason.VM_NOT_STOPPED,
            f"restoring VMBackup {annotation} in place needs the VM stopped"
            " (runStrategy: Halted); nothing was changed",
        ), None  # fmt: skip
    state = virtualmachines.VMRestoreState(
        backup=annotation,
        disks=[virtualmachines.RestoreDisk(name=d.name, path=d.path) for d in st.disks],
    )
    return Cond(
        "False", Reason.RESTORE_PENDING,
        f"the disks are replaced from VMBackup {annotation} before the VM next starts",
    ), state  # fmt: skip
