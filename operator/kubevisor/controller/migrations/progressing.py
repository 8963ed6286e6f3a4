"""The Migration reconciler's decision: from the Migration, its VM, the node Leases and
the admission result, the next phase and everything the handler writes. Pure.

Level-based (docs/architecture.md, "Migration"): the phase is recomputed from the
agents' reports (``status.source``, ``status.target``) every pass, so a restarted
controller reaches the same outcome. Only the controller writes ``phase``.

Transitions:

- Pending: cancel → Cancelled; otherwise the VM must exist, be placed and Running, the
  parallel limits must admit it (``limits``) and a target must pass the preconditions
  (``preconditions``); a wait or refusal is ``Scheduled=False`` with its reason.
  Admitted → Scheduling (source, target, labels, finalizer, VM label and
  ``status.migration``), and from Scheduling → PreparingTarget once that metadata is on.
- PreparingTarget / TargetReady: target Ready → TargetReady; source Migrating →
  Running; cancel/deletion → Cancelled (nothing moved yet); target Failed or its Lease
  lost → Failed (TargetFailed); stuck longer than completionTimeoutSeconds → Failed
  (CompletionTimeout).
- Running: source Completed, or the target's domain active while the source reports no
  job → Succeeded; source Failed → Failed (TargetFailed when the target failed or its
  Lease is lost, else MigrationFailed); source Aborted → Cancelled on cancel/deletion,
  else Failed with the agent's reason.
- Final: after Failed/Cancelled wait for the target's CleanedUp (or its Lease dead, or
  it never reported), then drop the VM's migration-target label; a deleting Migration's
  finalizer goes after that, never while the source reports Migrating.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from kubevisor.api import groups, migrations, nodes, virtualmachines
from kubevisor.api.conditions import ConditionStatus, ConditionType
from kubevisor.api.migrations import MigrationPhase as Phase
from kubevisor.api.migrations import MigrationReason as Reason
from kubevisor.api.migrations import SourceState, TargetState
from kubevisor.controller.migrations import limits, preconditions
from kubevisor.controller.placement import placing

#: The condition types the Migration reconciler owns.
SCHEDULED: Final = ConditionType.SCHEDULED.value
PROGRESSING: Final = "Progressing"
COMPLETED: Final = "Completed"
READY: Final = ConditionType.READY.value


@dataclass(frozen=True)
class Cond:
    """One condition as decided (the handler stamps times and generation)."""

    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class Inputs:
    """Everything one decision looks at."""

    migration: migrations.Migration
    labels: Mapping[str, str]
    """The Migration's metadata.labels."""
    finalizers: Sequence[str]
    deleting: bool
    """metadata.deletionTimestamp is set."""
    vm: virtualmachines.VirtualMachine | None
    vm_labels: Mapping[str, str]
    leases: Sequence[Mapping[str, Any]]
    """Raw node Leases."""
    used: Mapping[str, placing.Usage]
    """Capacity used per node by other VMs (a migrating VM counts on its target too)."""
    wait: limits.Wait | None
    """Why the limits hold this Pending migration back; None when admitted (or not
    Pending)."""
    now: datetime
    require_rtt: bool = True
    cpu_overcommit: float = 1.0
    cordoned: frozenset[str] = frozenset()
    """Names of the unschedulable Node objects (never a target)."""


@dataclass
class Decision:
    """What the handler writes, in its order: Migration metadata, VM label, VM
    ``status.migration``, Migration status, Events."""

    phase: Phase
    transitions: list[migrations.PhaseTransition]
    source_node: str | None
    target_node: str | None
    completed_at: datetime | None
    conds: dict[str, Cond]
    labels: dict[str, str] = field(default_factory=dict)
    """Migration labels to set (empty: none to change)."""
    finalizer: Literal["add", "remove"] | None = None
    vm_target_label: Literal["set", "remove"] | None = None
    vm_migration: migrations.VMMigrationState | None = None
    """``status.migration`` to apply on the VM (None: leave it)."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) to post on the Migration."""
    wait: bool = False
    """Look again at the next resync (a wait, a timeout to watch, a Lease to watch)."""


def _alive(leases: Sequence[Mapping[str, Any]], node: str | None, now: datetime) -> bool:
    for raw in leases:
        lease = nodes.parse(raw)
        if lease.name == node:
            return lease.alive(now)
    return False


def _since(transitions: Sequence[migrations.PhaseTransition], phase: Phase) -> datetime | None:
    return next((t.time for t in transitions if t.phase == phase), None)


def _final_reason(phase: Phase, reason: str) -> Cond:
    return Cond("True" if phase is Phase.SUCCEEDED else "False", reason, "")


def decide(inp: Inputs) -> Decision:
    """The next phase and the writes (rules in the module docstring)."""
    mig = inp.migration
    status = mig.status or migrations.MigrationStatus()
    phase = status.phase or Phase.PENDING
    name = mig.metadata.name
    vm_name = mig.spec.vm_name
    cancel = mig.spec.cancel or inp.deleting
    src, tgt = status.source, status.target
    d = Decision(
        phase=phase,
        transitions=migrations.enter_phase(status.phase_transitions, Phase.PENDING, now=inp.now),
        source_node=status.source_node,
        target_node=status.target_node,
        completed_at=status.completed_at,
        conds={},
    )
    old_conds = {c.type: c for c in status.conditions}

    def move(to: Phase, reason: str, message: str) -> None:
        d.phase = to
        d.transitions = migrations.enter_phase(d.transitions, to, now=inp.now)
        kind = "Warning" if to is Phase.FAILED else "Normal"
        d.events.append((kind, reason, message))

    # -- Pending ---------------------------------------------------------------------
    if phase is Phase.PENDING:
        if cancel:
            move(
                Phase.CANCELLED, Reason.CANCELLED, f"Migration {name} cancelled before it started."
            )
        else:
            verdict = _admit(inp, d)
            if verdict is None:
                return _finish(inp, d, old_conds)
            move(
                Phase.SCHEDULING,
                Reason.SCHEDULED,
                f"migrating VM {vm_name} from node {d.source_node} to node {d.target_node}.",
            )
            phase = Phase.SCHEDULING

    target_alive = _alive(inp.leases, d.target_node, inp.now)
    timeout = mig.spec.policy.completion_timeout_seconds

    # -- Scheduling: put the metadata on, then PreparingTarget --------------------------
    if d.phase is Phase.SCHEDULING:
        if cancel:
            move(Phase.CANCELLED, Reason.CANCELLED, f"Migration {name} cancelled before copying.")
        else:
            _metadata(inp, d)
            move(
                Phase.PREPARING_TARGET,
                Reason.PREPARING_TARGET,
                f"node {d.target_node} prepares to receive VM {vm_name}.",
            )

    # -- the agents' reports -------------------------------------------------------------
    elif d.phase in migrations.ACTIVE_PHASES:
        _metadata(inp, d)
        src_state = src.state if src is not None else None
        tgt_failed = tgt is not None and tgt.state is TargetState.FAILED
        landed = tgt is not None and tgt.domain_active is True
        src_msg = (src.message if src is not None else None) or ""
        if src_state is SourceState.COMPLETED or (
            landed and src_state in (None, SourceState.FAILED, SourceState.ABORTED)
        ):
            move(
                Phase.SUCCEEDED,
                Reason.SUCCEEDED,
                f"VM {vm_name} now runs on node {d.target_node} (moved from node {d.source_node}).",
            )
        elif src_state is SourceState.FAILED:
            if tgt_failed or not target_alive:
                why = (tgt.message if tgt is not None and tgt_failed else None) or (
                    f"node {d.target_node}'s agent stopped renewing its Lease"
                )
                move(
                    Phase.FAILED,
                    Reason.TARGET_FAILED,
                    f"target node {d.target_node}: {why}. {src_msg}".strip(),
                )
            else:
                move(
                    Phase.FAILED,
                    Reason.MIGRATION_FAILED,
                    f"migration from node {d.source_node} failed: {src_msg or 'no message'}",
                )
        elif src_state is SourceState.ABORTED:
            if cancel:
                move(
                    Phase.CANCELLED,
                    Reason.CANCELLED,
                    f"Migration {name} cancelled; VM {vm_name} stays on node {d.source_node}.",
                )
            else:
                reason = src.reason if src is not None and src.reason else Reason.MIGRATION_FAILED
                move(
                    Phase.FAILED, reason, src_msg or f"node {d.source_node} aborted the migration."
                )
        elif src_state is SourceState.MIGRATING:
            if d.phase is not Phase.RUNNING:
                if d.phase is Phase.PREPARING_TARGET:
                    d.transitions = migrations.enter_phase(
                        d.transitions, Phase.TARGET_READY, now=inp.now
                    )
                move(
                    Phase.RUNNING,
                    Reason.IN_PROGRESS,
                    f"copying VM {vm_name} from node {d.source_node} to node {d.target_node}.",
                )
        elif d.phase in (Phase.PREPARING_TARGET, Phase.TARGET_READY):
            since = _since(d.transitions, d.phase) or inp.now
            if cancel:
                move(
                    Phase.CANCELLED,
                    Reason.CANCELLED,
                    f"Migration {name} cancelled before copying; "
                    f"VM {vm_name} stays on node {d.source_node}.",
                )
            elif tgt_failed:
                assert tgt is not None
                move(
                    Phase.FAILED,
                    Reason.TARGET_FAILED,
                    f"node {d.target_node} could not prepare: "
                    f"{tgt.message or tgt.reason or 'no message'}",
                )
            elif not target_alive:
                move(
                    Phase.FAILED,
                    Reason.TARGET_FAILED,
                    f"node {d.target_node}'s agent stopped renewing its Lease.",
                )
            elif inp.now - since > timedelta(seconds=timeout):
                move(
                    Phase.FAILED,
                    Reason.COMPLETION_TIMEOUT,
                    f"not started within policy.completionTimeoutSeconds {timeout} s "
                    f"(stuck in {d.phase.value}).",
                )
            elif (
                d.phase is Phase.PREPARING_TARGET
                and tgt is not None
                and tgt.state is TargetState.READY
            ):
                move(
                    Phase.TARGET_READY,
                    Reason.IN_PROGRESS,
                    f"node {d.target_node} is ready to receive VM {vm_name}.",
                )
            else:
                d.wait = True
        elif d.phase is Phase.RUNNING:
            d.wait = True  # a lost source Lease, say: look again

    if d.phase in migrations.FINAL_PHASES:
        if d.completed_at is None:
            d.completed_at = inp.now
        _cleanup(inp, d, target_alive)
    elif d.phase in migrations.ACTIVE_PHASES and d.phase is not Phase.SCHEDULING:
        d.vm_target_label = (
            "set" if inp.vm_labels.get(groups.LABEL_MIGRATION_TARGET) != d.target_node else None
        )
    return _finish(inp, d, old_conds)


def _admit(inp: Inputs, d: Decision) -> preconditions.Verdict | None:
    """Pending: the VM, the limits, the preconditions. None (and Scheduled=False, wait)
    when it cannot start now; the verdict with a target when it can."""
    mig, vm = inp.migration, inp.vm
    d.wait = True
    if vm is None:
        d.conds[SCHEDULED] = Cond(
            "False",
            Reason.VM_NOT_FOUND,
            f"no VirtualMachine {mig.spec.vm_name} in namespace {mig.metadata.namespace}.",
        )
        return None
    if inp.wait is not None:
        d.conds[SCHEDULED] = Cond("False", inp.wait.reason, inp.wait.message)
        return None
    verdict = preconditions.check(
        vm,
        policy=mig.spec.policy,
        leases=list(inp.leases),
        used=inp.used,
        now=inp.now,
        target=mig.spec.target_node,
        cpu_overcommit=inp.cpu_overcommit,
        require_rtt=inp.require_rtt,
        cordoned=inp.cordoned,
    )
    if verdict.target is None:
        message = verdict.message
        if any(r.reason is Reason.RTT_UNKNOWN for r in verdict.refusals):
            message += (
                " (RTTUnknown: the agents have not reported round-trip times; set "
                "KUBEVISOR_MIGRATION_REQUIRE_RTT=false on the controller to allow it.)"
            )
        d.conds[SCHEDULED] = Cond("False", verdict.reason, message)
        return None
    assert vm.status is not None
    d.wait = False
    d.source_node = vm.status.node_name
    d.target_node = verdict.target
    d.conds[SCHEDULED] = Cond(
        "True",
        Reason.SCHEDULED,
        f"VM {vm.metadata.name} moves from node {d.source_node} to node {d.target_node}.",
    )
    return verdict


def _metadata(inp: Inputs, d: Decision) -> None:
    """Labels, finalizer and the VM's ``status.migration`` for an admitted migration."""
    assert d.source_node is not None and d.target_node is not None
    wanted = {
        groups.LABEL_MIGRATION_SOURCE_NODE: d.source_node,
        groups.LABEL_MIGRATION_TARGET_NODE: d.target_node,
        groups.LABEL_VM: inp.migration.spec.vm_name,
    }
    if any(inp.labels.get(k) != v for k, v in wanted.items()):
        d.labels = wanted
    if groups.FINALIZER not in inp.finalizers and not inp.deleting:
        d.finalizer = "add"
    if inp.vm_labels.get(groups.LABEL_MIGRATION_TARGET) != d.target_node and inp.vm is not None:
        d.vm_target_label = "set"


def _vm_state(inp: Inputs, d: Decision) -> migrations.VMMigrationState | None:
    """``status.migration`` to write on the VM, or None when it already says so (or
    names a newer migration this one must not overwrite)."""
    vm = inp.vm
    if vm is None or d.source_node is None or d.target_node is None:
        return None
    current = vm.status.migration if vm.status is not None else None
    name = inp.migration.metadata.name
    if current is not None and current.name != name and d.phase in migrations.FINAL_PHASES:
        return None
    wanted = migrations.VMMigrationState(
        name=name, source_node=d.source_node, target_node=d.target_node, phase=d.phase
    )
    return None if current == wanted else wanted


def _cleanup(inp: Inputs, d: Decision, target_alive: bool) -> None:
    """After the end: the VM's target label, then the finalizer."""
    status = inp.migration.status
    src = status.source if status is not None else None
    tgt = status.target if status is not None else None
    if d.phase is Phase.SUCCEEDED:
        done = True  # the VM reconciler moves the node and drops the target label
    else:
        done = tgt is None or tgt.state is TargetState.CLEANED_UP or not target_alive
        if done and inp.vm_labels.get(groups.LABEL_MIGRATION_TARGET) == d.target_node:
            vm_state = inp.vm.status.migration if inp.vm and inp.vm.status else None
            if vm_state is None or vm_state.name == inp.migration.metadata.name:
                d.vm_target_label = "remove"
        if not done:
            d.wait = True
    migrating = src is not None and src.state is SourceState.MIGRATING
    if inp.deleting and done and not migrating and groups.FINALIZER in inp.finalizers:
        d.finalizer = "remove"


def _finish(inp: Inputs, d: Decision, old: Mapping[str, Any]) -> Decision:
    """Conditions for the phase reached, and ``status.migration`` for the VM."""
    name = inp.migration.metadata.name
    reason, message = _headline(inp, d, old)
    if SCHEDULED not in d.conds:
        prev = old.get(SCHEDULED)
        if prev is not None:
            d.conds[SCHEDULED] = Cond(prev.status, prev.reason, prev.message)
        elif d.phase is Phase.CANCELLED:
            d.conds[SCHEDULED] = Cond("False", Reason.CANCELLED, f"Migration {name} was cancelled.")
    final = d.phase in migrations.FINAL_PHASES
    active = d.phase in migrations.ACTIVE_PHASES
    d.conds[PROGRESSING] = Cond("True" if active else "False", reason, message)
    d.conds[COMPLETED] = Cond("True" if final else "False", reason, message)
    d.conds[READY] = Cond("True" if d.phase is Phase.SUCCEEDED else "False", reason, message)
    if d.phase is not Phase.PENDING:
        d.vm_migration = _vm_state(inp, d)
    return d


def _headline(inp: Inputs, d: Decision, old: Mapping[str, Any]) -> tuple[str, str]:
    """The reason and sentence of the current state (Ready, Progressing, Completed)."""
    if d.events:
        _, reason, message = d.events[-1]
        return reason, message
    if d.phase is Phase.PENDING:
        cond = d.conds[SCHEDULED]
        return cond.reason, cond.message
    prev = old.get(READY)
    if prev is not None:
        return prev.reason, prev.message
    return Reason.IN_PROGRESS, f"Migration {inp.migration.metadata.name} is {d.phase.value}."
