"""The agent's part of VirtualMachine status, computed purely: the fields and conditions
it owns (:data:`OWN_FIELDS`, :data:`OWN_CONDITIONS`), built from a :class:`Report`, and
whether they differ from what the object already says.

They are applied with server-side apply (field manager ``kubevisor-agent``, see
:mod:`kubevisor.agent.kube.statuses`) and only when :func:`needs_apply`: skipping no-op
applies is what keeps a VM at <= 3 status writes from apply to Running.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from kubevisor.api import conditions, virtualmachines

FIELD_MANAGER = "kubevisor-agent"
#: Condition types the agent owns on a VirtualMachine.
OWN_CONDITIONS = (
    conditions.ConditionType.READY,
    conditions.ConditionType.NETWORK_READY,
    conditions.ConditionType.GUEST_READY,
)
#: Status fields the agent owns (besides its conditions).
OWN_FIELDS = (
    "phase",
    "interfaces",
    "display",
    "consoleLog",
    "domainUUID",
    "startedAt",
    "runningAt",
    "appliedRestartToken",
    "appliedRestore",
)

Phase = virtualmachines.VirtualMachinePhase

#: Phases in which the domain is up: Ready, and live facts (display, taps) are reported.
UP = frozenset({Phase.RUNNING, Phase.PAUSED})

_READY_REASONS = {
    Phase.RUNNING: conditions.Reason.RUNNING,
    Phase.PAUSED: conditions.Reason.AS_EXPECTED,
    Phase.STARTING: conditions.Reason.STARTING,
    Phase.STOPPING: conditions.Reason.IN_PROGRESS,
    Phase.STOPPED: conditions.Reason.STOPPED,
    Phase.SUCCEEDED: conditions.Reason.SUCCEEDED,
    Phase.FAILED: conditions.Reason.FAILED,
}


@dataclasses.dataclass(frozen=True)
class Report:
    """What the agent knows about one VM after a reconcile."""

    phase: Phase
    interfaces: tuple[dict[str, Any], ...] = ()
    display: dict[str, Any] | None = None
    console_log: str | None = None
    domain_uuid: str | None = None
    started_at: str | None = None
    running_at: str | None = None
    applied_restart_token: str | None = None
    applied_restore: str | None = None
    """The VMBackup last restored in place (status.restore acted on)."""
    ready_reason: str | None = None
    """Overrides the reason derived from the phase (e.g. ImageNotFound)."""
    message: str = ""
    network_ready: bool | None = None
    """None: the VM has no NICs, no NetworkReady condition."""
    network_reason: str | None = None
    """NetworkReady's reason when False (default NetworkUnavailable)."""
    network_message: str = ""
    guest_ready: bool = False
    """The guest printed its ready line since it booted (``api/guestready``): the
    GuestReady condition, True; absent otherwise."""


def desired_status(
    report: Report, *, current: dict[str, Any], generation: int | None, now: datetime
) -> dict[str, Any]:
    """The agent's complete status fields for an apply (pure).

    ``current`` is the object's status as read (both managers' fields); condition
    transition times are carried over from it when a condition's status did not flip.
    """
    own: dict[str, Any] = {"phase": str(report.phase)}
    if report.interfaces:
        own["interfaces"] = [dict(i) for i in report.interfaces]
    for key, value in (
        ("display", report.display),
        ("consoleLog", report.console_log),
        ("domainUUID", report.domain_uuid),
        ("startedAt", report.started_at),
        ("runningAt", report.running_at),
        ("appliedRestartToken", report.applied_restart_token),
        ("appliedRestore", report.applied_restore),
    ):
        if value is not None:
            own[key] = value
    existing = [c for c in current.get("conditions") or [] if c.get("type") in set(OWN_CONDITIONS)]
    ready = report.phase in UP
    reason = report.ready_reason or _READY_REASONS.get(report.phase, conditions.Reason.IN_PROGRESS)
    message = report.message or f"the domain is {report.phase.lower()}"
    conds = conditions.set_condition(
        existing,
        type=conditions.ConditionType.READY,
        status="True" if ready else "False",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    if report.network_ready is not None:
        conds = conditions.set_condition(
            conds,
            type=conditions.ConditionType.NETWORK_READY,
            status="True" if report.network_ready else "False",
            reason=conditions.Reason.AS_EXPECTED
            if report.network_ready
            else (report.network_reason or conditions.Reason.NETWORK_UNAVAILABLE),
            message=report.network_message,
            generation=generation,
            now=now,
        )
    else:
        conds = [c for c in conds if c["type"] != conditions.ConditionType.NETWORK_READY]
    if report.guest_ready and ready:
        conds = conditions.set_condition(
            conds,
            type=conditions.ConditionType.GUEST_READY,
            status="True",
            reason=conditions.Reason.AS_EXPECTED,
            message="the guest printed its ready line on the serial console",
            generation=generation,
            now=now,
        )
    else:
        conds = [c for c in conds if c["type"] != conditions.ConditionType.GUEST_READY]
    own["conditions"] = conds
    return own


def needs_apply(own: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when any agent-owned field or condition differs from the object's status."""
    for key in OWN_FIELDS:
        if own.get(key) != current.get(key):
            return True
    mine = {c["type"]: c for c in own.get("conditions", [])}
    theirs = {c.get("type"): c for c in current.get("conditions") or [] if c.get("type") in mine}
    if set(theirs) != set(mine):
        return True
    for type_, cond in mine.items():
        other = theirs[type_]
        if any(cond.get(k) != other.get(k) for k in cond):
            return True
    # A condition type we used to own but no longer send.
    stale = {str(t) for t in OWN_CONDITIONS} - set(mine)
    return any(c.get("type") in stale for c in current.get("conditions") or [])
