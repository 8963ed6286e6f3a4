"""Parallel migration limits: which Pending migrations may start now, and why the rest
wait.

Defaults are KubeVirt's: at most 5 migrations in the cluster and 2 outbound per source
node at a time; configurable per controller (:meth:`Limits.from_env`). Pure: the handler
lists the cluster's Migrations, calls :func:`admit` and moves the admitted ones to
Scheduling; the others stay Pending with the reason on their Scheduled condition.

Rules, in order, for Pending migrations taken oldest first (creation time, then
namespace/name, so the order is stable across restarts):

1. a VM moves once at a time: a migration whose VM already has an active (or
   just-admitted) migration waits (``VMAlreadyMigrating``);
2. the cluster limit counts every active migration (``ClusterLimitReached``);
3. the outbound limit counts active migrations leaving the same source node
   (``NodeOutboundLimitReached``).

A migration blocked by its node's limit does not block younger ones from other nodes:
a busy node must not stall the whole cluster. Active means a phase in
``migrations.ACTIVE_PHASES``; final and Pending ones hold no slot.

A Pending migration its preconditions refused last time (no target fits, RTT too high...:
``Entry.refused``) is considered after every other Pending one: it gets only a slot left
over, so one that cannot move does not keep a slot from one that can. It is still
admitted when there is room, so its preconditions are checked again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from kubevisor.api import migrations

Reason = migrations.MigrationReason

#: The reasons this module gives (a Pending migration waiting for one of these is not
#: refused: it only waits for a slot).
LIMIT_REASONS: Final = frozenset(
    {Reason.VM_ALREADY_MIGRATING, Reason.CLUSTER_LIMIT, Reason.NODE_OUTBOUND_LIMIT}
)

#: Environment variables the controller reads the limits from (``Limits.from_env``).
ENV_PER_CLUSTER: Final = "KUBEVISOR_MIGRATIONS_PER_CLUSTER"
ENV_OUTBOUND_PER_NODE: Final = "KUBEVISOR_MIGRATIONS_OUTBOUND_PER_NODE"


@dataclass(frozen=True)
class Limits:
    """How many migrations may be active at once."""

    per_cluster: int = 5
    outbound_per_node: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits:
        """Limits from :data:`ENV_PER_CLUSTER` / :data:`ENV_OUTBOUND_PER_NODE`; a missing
        value keeps the default. Raises ``ValueError`` for a value that is not a positive
        integer (a typo must stop the controller, not silently allow everything)."""
        defaults = cls()

        def read(key: str, default: int) -> int:
            text = environ.get(key, "").strip()
            if not text:
                return default
            value = int(text)
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
            return value

        return cls(
            per_cluster=read(ENV_PER_CLUSTER, defaults.per_cluster),
            outbound_per_node=read(ENV_OUTBOUND_PER_NODE, defaults.outbound_per_node),
        )


@dataclass(frozen=True)
class Entry:
    """One Migration as the limits see it."""

    key: str
    """``namespace/name`` of the Migration."""
    vm: str
    """``namespace/name`` of the VM it moves."""
    source_node: str
    """Node the VM runs on (status.sourceNode once set, else the VM's nodeName)."""
    phase: migrations.MigrationPhase
    created: datetime
    """metadata.creationTimestamp: the queue order."""
    refused: bool = False
    """Pending, and its preconditions refused it last time (Scheduled=False with a
    reason not in :data:`LIMIT_REASONS`)."""


@dataclass(frozen=True)
class Wait:
    """Why a Pending migration does not start now."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class Admission:
    """The answer: Pending migrations that may start now (oldest first), and the others."""

    start: tuple[str, ...]
    waiting: Mapping[str, Wait]


def admit(entries: Iterable[Entry], limits: Limits = Limits()) -> Admission:
    """Which Pending migrations start now, under ``limits`` (rules in the module docstring)."""
    entries = list(entries)
    active = [e for e in entries if e.phase in migrations.ACTIVE_PHASES]
    cluster = len(active)
    outbound = Counter(e.source_node for e in active)
    moving = {e.vm: e.key for e in active}
    pending = sorted(
        (e for e in entries if e.phase is migrations.MigrationPhase.PENDING),
        key=lambda e: (e.refused, e.created, e.key),
    )
    start: list[str] = []
    waiting: dict[str, Wait] = {}
    for e in pending:
        if e.vm in moving:
            waiting[e.key] = Wait(
                Reason.VM_ALREADY_MIGRATING,
                f"VM {e.vm} is already being moved by Migration {moving[e.vm]}.",
            )
        elif cluster >= limits.per_cluster:
            waiting[e.key] = Wait(
                Reason.CLUSTER_LIMIT,
                f"{cluster} migrations are running, the cluster allows "
                f"{limits.per_cluster} at a time.",
            )
        elif outbound[e.source_node] >= limits.outbound_per_node:
            waiting[e.key] = Wait(
                Reason.NODE_OUTBOUND_LIMIT,
                f"node {e.source_node} is sending {outbound[e.source_node]} migrations, "
                f"it allows {limits.outbound_per_node} at a time.",
            )
        else:
            start.append(e.key)
            cluster += 1
            outbound[e.source_node] += 1
            moving[e.vm] = e.key
    return Admission(tuple(start), waiting)
