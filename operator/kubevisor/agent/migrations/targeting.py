"""The target agent's decision for one Migration, pure.

The target prepares (segments for the VM's NICs, disk directories, base images of linked
disks, and for block copy the destination disk files libvirt's NON_SHARED_INC fills),
reports Ready or Failed, says domainActive while the domain runs here, and after a final
Failed/Cancelled phase cleans up what it created for this migration — only when the VM is
not placed on this node, and only the disks it recorded creating. It never starts the
incoming domain itself: libvirt does, as part of the migration.

Table-tested in tests/unit/agent/test_migration_targeting.py.
"""

from __future__ import annotations

import dataclasses
import enum

from kubevisor.api import migrations

Phase = migrations.MigrationPhase
State = migrations.TargetState

#: Phases in which the target keeps (or gets) its side prepared.
PREPARE_PHASES = frozenset({Phase.PREPARING_TARGET, Phase.TARGET_READY, Phase.RUNNING})


class Action(enum.StrEnum):
    """What the target agent does."""

    PREPARE = "prepare"
    """Segments, disk directories, base images, block-copy destination disks; then
    report Ready (or Failed with the reason)."""
    CLEAN_UP = "clean-up"
    """Destroy+undefine a leftover domain of the VM here, remove its taps and the disks
    recorded as created for this migration, prune segments; then report CleanedUp."""


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything the decision reads."""

    node: str
    phase: str | None
    reported: str | None = None
    """status.target.state as last written (a :class:`State` value)."""
    reported_domain_active: bool | None = None
    """status.target.domainActive as last written."""
    prepared: bool = False
    """This process prepared the target side for this Migration (it is idempotent, so a
    restarted agent prepares again)."""
    placed_here: bool = False
    """The VM's kubevisor.io/node label names this node."""
    domain_active: bool = False
    """The VM's domain runs here (not a paused incoming shell)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    action: Action | None = None
    domain_active: bool | None = None
    """domainActive to report (None: leave it)."""


def decide(observed: Observed) -> Plan:
    """The target agent's plan for one Migration (see module docstring)."""
    phase = observed.phase
    active_changed = observed.domain_active and not observed.reported_domain_active
    if phase in PREPARE_PHASES:
        if observed.reported == State.FAILED:
            return Plan()  # the controller fails the migration; we wait for the end
        if not observed.prepared or observed.reported != State.READY:
            return Plan(Action.PREPARE, domain_active=True if active_changed else None)
        return Plan(domain_active=True) if active_changed else Plan()
    if phase == Phase.SUCCEEDED:
        return Plan(domain_active=True) if active_changed else Plan()
    if phase in (Phase.FAILED, Phase.CANCELLED):
        if observed.placed_here or observed.reported in (None, State.CLEANED_UP):
            return Plan()  # never prepared, already clean, or the VM lives here now
        return Plan(Action.CLEAN_UP)
    return Plan()


def settled(phase: str | None, reported: str | None) -> bool:
    """Nothing is left for the target until the Migration changes (pure): the VM arrived,
    or the migration failed and this side is clean (or was never prepared). The work
    loop's tick skips settled Migrations (see :func:`.sourcing.settled`)."""
    if phase == Phase.SUCCEEDED:
        return True
    return phase in (Phase.FAILED, Phase.CANCELLED) and reported in (None, State.CLEANED_UP)
