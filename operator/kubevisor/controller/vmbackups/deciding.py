"""What one pass over a VMBackup decides (pure; table-tested).

Order of the rules (docs/backup.md):

1. Deleting: refused (Ready=False ``NeededByIncremental``, Warning Event, finalizer kept)
   while a kept backup, not being deleted and not Failed, names this one as its
   ``chain.previous``; otherwise our finalizer goes (the node's agent then removes the
   files, unless ``spec.retain``).
2. Final (Succeeded, Failed): nothing changes any more.
3. Running: the phase follows the agent's report (Succeeded, Failed with its reason).
4. Pending: the VM must exist and be placed; a Migration or another backup of the VM
   that runs or was asked for first goes first (``vmbackups.waits_for``); an Incremental
   needs a previous Succeeded live backup (one with a checkpoint) of the same VM to the
   same target. Then it is admitted: the node is the VM's node, the VM's recorded machine
   is kept for a restore, the chain is fixed, and the VMBackup is labelled for that
   node's agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from kubevisor.api import conditions, groups, machines, virtualmachines, vmbackups

Reason = vmbackups.BackupReason
Phase = vmbackups.VMBackupPhase
READY = conditions.ConditionType.READY


@dataclasses.dataclass(frozen=True)
class Cond:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Other:
    """Another VMBackup of the namespace, as far as chains and deletion care."""

    name: str
    backup: vmbackups.VMBackup
    deleting: bool
    completed: datetime | None


@dataclasses.dataclass(frozen=True)
class Inputs:
    backup: vmbackups.VMBackup
    name: str
    finalizers: Sequence[str]
    deleting: bool
    vm: virtualmachines.VirtualMachine | None
    turn: vmbackups.Turn
    """This backup as the turn rule sees it."""
    contenders: Sequence[vmbackups.Turn]
    """Every contending backup and migration of the VM (``backup_turn``/``migration_turn``)."""
    others: Sequence[Other]
    """Every other VMBackup of the namespace."""


@dataclasses.dataclass
class Decision:
    phase: Phase
    ready: Cond
    node_name: str | None = None
    mode: vmbackups.BackupMode | None = None
    chain: vmbackups.BackupChain | None = None
    machine: machines.MachineSpec | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    """Labels to add to the VMBackup."""
    finalizer: Literal["add", "remove"] | None = None
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(type, reason, message) to post."""
    wait: bool = False
    """Look again at the next resync."""


def previous_of(backup: vmbackups.VMBackup, name: str, others: Sequence[Other]) -> Other | None:
    """The latest Succeeded live backup (it has a checkpoint) of the same VM to the same
    target, not being deleted: what an Incremental adds to (pure)."""
    fit = [
        o
        for o in others
        if o.name != name
        and not o.deleting
        and o.backup.spec.vm_name == backup.spec.vm_name
        and o.backup.spec.target == backup.spec.target
        and o.backup.status is not None
        and o.backup.status.phase is Phase.SUCCEEDED
        and o.backup.status.checkpoint
        and o.completed is not None
    ]
    return max(fit, key=lambda o: (o.completed, o.name)) if fit else None


def needed_by(name: str, others: Sequence[Other]) -> list[str]:
    """Kept backups (not deleting, not Failed) whose chain adds to ``name`` (pure)."""
    return sorted(
        o.name
        for o in others
        if o.name != name
        and not o.deleting
        and o.backup.status is not None
        and o.backup.status.phase is not Phase.FAILED
        and o.backup.status.chain is not None
        and o.backup.status.chain.previous == name
    )


def _kept(inp: Inputs, ready: Cond) -> Decision:
    st = inp.backup.status or vmbackups.VMBackupStatus()
    return Decision(
        phase=st.phase or Phase.PENDING,
        ready=ready,
        node_name=st.node_name,
        mode=st.mode,
        chain=st.chain,
        machine=st.machine,
    )


def _current_ready(inp: Inputs) -> Cond | None:
    st = inp.backup.status
    for c in st.conditions if st else []:
        if c.type == READY:
            return Cond(c.status, c.reason, c.message)
    return None


def decide(inp: Inputs) -> Decision:
    """The next state of one VMBackup (see module docstring)."""
    st = inp.backup.status or vmbackups.VMBackupStatus()
    phase = st.phase or Phase.PENDING
    if inp.deleting:
        return _deleting(inp)
    current = _current_ready(inp)
    if phase in vmbackups.FINAL_PHASES:
        d = _kept(inp, current or Cond("False", Reason.BACKUP_FAILED, "the backup failed."))
    elif phase is Phase.RUNNING:
        d = _running(inp)
    else:
        d = _pending(inp)
    if groups.FINALIZER not in inp.finalizers:
        d.finalizer = "add"
    return d


def _deleting(inp: Inputs) -> Decision:
    if groups.FINALIZER not in inp.finalizers:
        return _kept(inp, _current_ready(inp) or Cond("False", Reason.BACKUP_FAILED, ""))
    needing = needed_by(inp.name, inp.others)
    if needing:
        message = (
            f"deletion refused: the kept incremental backup(s) {', '.join(needing)} chain to"
            f" {inp.name}; delete them first (or together with it)."
        )
        d = _kept(inp, Cond("False", Reason.NEEDED_BY_INCREMENTAL, message))
        d.wait = True
        if (_current_ready(inp) or Cond("False", "", "")).message != message:
            d.events.append(("Warning", Reason.NEEDED_BY_INCREMENTAL, message))
        return d
    d = _kept(inp, _current_ready(inp) or Cond("False", Reason.BACKUP_FAILED, ""))
    d.finalizer = "remove"
    return d


def _running(inp: Inputs) -> Decision:
    st = inp.backup.status or vmbackups.VMBackupStatus()
    report = st.agent
    node = st.node_name
    if report is not None and report.state is vmbackups.AgentState.SUCCEEDED:
        size = st.size_bytes
        message = f"backed up on node {report.node}" + (
            f" ({size} bytes written)." if size is not None else "."
        )
        d = _kept(inp, Cond("True", Reason.SUCCEEDED, message))
        d.phase = Phase.SUCCEEDED
        d.events.append(("Normal", Reason.SUCCEEDED, message))
        return d
    if report is not None and report.state is vmbackups.AgentState.FAILED:
        reason = report.reason or Reason.BACKUP_FAILED
        message = report.message or "the node's agent reported a failure."
        d = _kept(inp, Cond("False", reason, message))
        d.phase = Phase.FAILED
        d.events.append(("Warning", reason, message))
        return d
    d = _kept(inp, Cond("False", Reason.IN_PROGRESS, f"copying the disks on node {node}."))
    d.wait = True
    return d


def _pending(inp: Inputs) -> Decision:
    spec = inp.backup.spec
    vm = inp.vm

    def waiting(reason: str, message: str) -> Decision:
        d = Decision(phase=Phase.PENDING, ready=Cond("False", reason, message), wait=True)
        before = _current_ready(inp)
        if before is None or before.message != message:
            quiet = reason in (Reason.MIGRATION_IN_PROGRESS, Reason.BACKUP_IN_PROGRESS)
            d.events.append(("Normal" if quiet else "Warning", reason, message))
        return d

    if vm is None:
        return waiting(
            Reason.VM_NOT_FOUND,
            f"VirtualMachine {spec.vm_name} does not exist; the backup waits for it.",
        )
    vst = vm.status
    if vst is None or not vst.node_name or vst.machine is None:
        return waiting(
            Reason.VM_NOT_PLACED,
            f"VirtualMachine {spec.vm_name} has no node and no disks yet; the backup waits.",
        )
    first = vmbackups.waits_for(inp.turn, inp.contenders)
    if first is not None:
        reason = (
            Reason.MIGRATION_IN_PROGRESS if first.kind == "Migration" else Reason.BACKUP_IN_PROGRESS
        )
        state = "runs" if first.active else "was asked for first"
        return waiting(
            reason,
            f"{first.kind} {first.name} of VM {spec.vm_name} {state}; this backup waits for it.",
        )
    chain = vmbackups.BackupChain(full=inp.name)
    if spec.mode is vmbackups.BackupMode.INCREMENTAL:
        previous = previous_of(inp.backup, inp.name, inp.others)
        if previous is None:
            return waiting(
                Reason.NO_PREVIOUS_BACKUP,
                f"an Incremental backup needs a previous Succeeded live backup of VM"
                f" {spec.vm_name} to the same target; none exists. Take a Full backup first.",
            )
        pchain = (previous.backup.status and previous.backup.status.chain) or (
            vmbackups.BackupChain(full=previous.name)
        )
        chain = vmbackups.BackupChain(
            full=pchain.full, previous=previous.name, length=pchain.length + 1
        )
    message = f"admitted: node {vst.node_name}'s agent copies the disks."
    return Decision(
        phase=Phase.RUNNING,
        ready=Cond("False", Reason.IN_PROGRESS, message),
        node_name=vst.node_name,
        mode=spec.mode,
        chain=chain,
        machine=vst.machine,
        labels={vmbackups.LABEL_BACKUP_NODE: vst.node_name, groups.LABEL_VM: spec.vm_name},
        events=[("Normal", "Started", message)],
        wait=True,
    )
