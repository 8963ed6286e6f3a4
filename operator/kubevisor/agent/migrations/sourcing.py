"""The source agent's decision for one Migration, pure (like :mod:`kubevisor.agent.reconciling`).

Level-based: the inputs are the Migration (phase, cancel, deletion, policy timeout), what
this agent reported last (``status.source.state``), whether this process drives the
libvirt call now, and what libvirt shows (domain active here, a migration job held). A
restarted agent, which drives nothing, converges from libvirt alone:

- job still active in libvirt: keep sampling until it ends (ADOPT);
- domain still active here with no job: Failed (the VM keeps running here);
- domain gone here: Completed (UNDEFINE_SOURCE: it left for the target).

Table-tested in tests/unit/agent/test_migration_sourcing.py.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from kubevisor.api import groups, migrations

Phase = migrations.MigrationPhase
State = migrations.SourceState
Reason = migrations.MigrationReason


class Action(enum.StrEnum):
    """What the source agent does."""

    START = "start"
    """Build the request (policy, disks, target's migration URI) and run the migration."""
    ADOPT = "adopt"
    """A job this process did not start is active in libvirt: sample it until it ends."""
    ABORT = "abort"
    """Abort the job this agent drives (or adopted); the guest stays here."""


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything the decision reads."""

    node: str
    """This node (the migration's source)."""
    phase: str | None
    """The Migration's phase as the controller wrote it."""
    reported: str | None = None
    """status.source.state as last written by a source agent (a :class:`State` value)."""
    cancel: bool = False
    deleting: bool = False
    timed_out: bool = False
    """Running longer than policy.completionTimeoutSeconds since startedAt."""
    driving: bool = False
    """This process runs the migration call now."""
    domain_active: bool | None = None
    """The VM's domain here: True active, False defined but off, None not here."""
    job_active: bool = False
    """libvirt holds an active (bounded/unbounded) job for the domain."""


@dataclasses.dataclass(frozen=True)
class Report:
    """A source report to apply (field manager SOURCE_FIELD_MANAGER)."""

    state: State
    reason: Reason | None = None
    message: str | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do and what to report before doing it (None: leave the report)."""

    action: Action | None = None
    report: Report | None = None
    abort_reason: Reason | None = None
    """For ABORT: Cancelled or CompletionTimeout (reported as Aborted once it ended)."""


_FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.ABORTED})


def _stop_reason(observed: Observed) -> Reason | None:
    if observed.cancel or observed.deleting or observed.phase == Phase.CANCELLED:
        return Reason.CANCELLED
    if observed.timed_out:
        return Reason.COMPLETION_TIMEOUT
    return None


def restart_failure(node: str) -> Report:
    """The report of a restarted agent that finds the guest here and no job (pure)."""
    return Report(
        State.FAILED,
        Reason.MIGRATION_FAILED,
        f"agent restarted; libvirt holds no migration job; the VM keeps running on {node}",
    )


def decide(observed: Observed) -> Plan:
    """The source agent's plan for one Migration (see module docstring)."""
    if observed.reported in _FINAL_STATES:
        return Plan()
    stop = _stop_reason(observed)
    if observed.driving or (observed.reported == State.MIGRATING and observed.job_active):
        if stop is not None or observed.phase == Phase.FAILED:
            return Plan(Action.ABORT, abort_reason=stop or Reason.CANCELLED)
        return Plan() if observed.driving else Plan(Action.ADOPT)
    if observed.reported == State.MIGRATING:
        # We said Migrating, nobody drives it now and libvirt holds no job: a restart.
        if observed.domain_active is None:
            return Plan(report=Report(State.COMPLETED))
        return Plan(report=restart_failure(observed.node))
    if stop is not None or observed.phase != Phase.TARGET_READY:
        return Plan()
    if observed.domain_active is not True:
        return Plan(
            report=Report(
                State.FAILED,
                Reason.MIGRATION_FAILED,
                f"the VM's domain is not running on {observed.node}; nothing to migrate",
            )
        )
    return Plan(Action.START, report=Report(State.MIGRATING))


def stale_copies_here(
    *,
    phase: str | None,
    reported: str | None,
    domain_here: bool,
    vm_labels: Mapping[str, str],
    node: str,
) -> bool:
    """Whether the VM's node-local files on this source node are stale copies to remove
    (pure): the migration Succeeded with our job Completed, so the guest runs from the
    target's copies — also when this agent restarted mid-migration and never drove the
    job's end itself. Never while a domain of the VM is here, or the VM is placed here
    again or a migration is bringing it back: then those files are its live disks."""
    if phase != Phase.SUCCEEDED or reported != State.COMPLETED or domain_here:
        return False
    holders = (vm_labels.get(groups.LABEL_NODE), vm_labels.get(groups.LABEL_MIGRATION_TARGET))
    return node not in holders


def settled(phase: str | None, reported: str | None) -> bool:
    """Nothing is left for the source until the Migration changes (pure): it reported
    the job's end, or the migration ended without a job of ours running. The work loop's
    tick skips settled Migrations; a change, a domain event and the informer's resync
    still bring them back."""
    if reported in _FINAL_STATES:
        return True
    return phase in migrations.FINAL_PHASES and reported != State.MIGRATING


def failure_reason(message: str) -> Reason:
    """TargetFailed for a libvirt error reaching the target (connection, RPC), else
    MigrationFailed (pure; libvirt's words decide)."""
    lowered = message.lower()
    words = ("unable to connect", "connection", "rpc", "end of file", "cannot recv", "broken pipe")
    return Reason.TARGET_FAILED if any(w in lowered for w in words) else Reason.MIGRATION_FAILED


def should_switch_post_copy(
    post_copy: bool, samples: Sequence[migrations.MigrationProgress], *, switched: bool
) -> bool:
    """Switch to post-copy when the policy allows it and pre-copy stopped converging: a
    new memory iteration began with no less data remaining than the one before (pure)."""
    if not post_copy or switched:
        return False
    firsts: dict[int, int] = {}
    for sample in samples:
        if sample.memory_iterations is None or sample.data_remaining_bytes is None:
            continue
        firsts.setdefault(sample.memory_iterations, sample.data_remaining_bytes)
    if len(firsts) < 3:
        return False
    last, before = sorted(firsts)[-1], sorted(firsts)[-2]
    return last >= 2 and firsts[last] >= firsts[before]


def progress_due(last_written: float | None, now: float, *, interval: float = 1.0) -> bool:
    """Whether a progress sample may be written now (about once a second, no faster)."""
    return last_written is None or now - last_written >= interval
