"""Desired vs actual -> actions: the agent's decision for one VirtualMachine, pure.

Level-based: the inputs are what the VM object says (desired power state from the
controller, pending restart, the phase we reported last) and what libvirt says now (the
domain's state and why it is off). Nothing is remembered between calls except when we
asked a guest to shut down (for the ACPI timeout), so a restarted agent decides the same.

How the agent tells "the guest stopped on its own" from "we stopped it": the phase it
reported last. A domain that is off while the phase still says Running/Paused/Starting
went off without being asked: Succeeded when the guest powered off, Failed otherwise.
The controller reacts (runStrategy) by moving desiredState or bumping restartToken; the
agent never restarts a guest on its own.
"""

from __future__ import annotations

import dataclasses
import enum

from kubevisor.api import virtualmachines

Phase = virtualmachines.VirtualMachinePhase
Desired = virtualmachines.DesiredState


class Action(enum.StrEnum):
    """Steps the agent can take, executed in the order given."""

    ENSURE = "ensure"
    """Create disks and segments, (re)define the domain from status.machine."""
    START = "start"
    SHUTDOWN = "shutdown"
    """ACPI power-button: ask the guest to power off."""
    DESTROY = "destroy"
    SUSPEND = "suspend"
    RESUME = "resume"
    UNDEFINE = "undefine"
    CLEANUP = "cleanup"
    """Remove the VM's own disks and unused segments, then drop our finalizer."""
    APPLY_RESTART = "apply-restart"
    """Record restartToken as appliedRestartToken."""


#: Phases meaning "the domain should be up as far as we know".
_UP_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.STARTING, Phase.MIGRATING})
_ACTIVE = frozenset({"running", "paused", "shutting-down", "other"})


@dataclasses.dataclass(frozen=True)
class DomainView:
    """The domain as libvirt reports it (see ``libvirt.DomainInfo``)."""

    state: str
    """running, paused, shutting-down, shutoff, crashed or other."""
    guest_shut_down: bool = False
    """Off because the guest powered off."""

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything the decision reads."""

    desired: str | None
    """status.desiredState as read (a :class:`Desired` value; None: controller not done
    yet)."""
    has_machine: bool = True
    """status.machine is set (the agent realizes only a resolved machine)."""
    deleting: bool = False
    restart_pending: bool = False
    """status.restartToken differs from status.appliedRestartToken."""
    phase: str | None = None
    """status.phase as last reported (a :class:`Phase` value, read from the object)."""
    domain: DomainView | None = None
    shutdown_requested: bool = False
    """We sent an ACPI shutdown and are waiting for the guest."""
    shutdown_timed_out: bool = False
    """... and the grace period is over."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do and what to report afterwards."""

    actions: tuple[Action, ...] = ()
    phase: Phase | None = None
    """Phase to report once the actions succeeded; None: leave the phase alone."""
    requeue: bool = False
    """Look again soon (a shutdown is in progress)."""


def _graceful_stop(observed: Observed) -> Plan:
    if observed.shutdown_timed_out:
        return Plan((Action.DESTROY,), phase=Phase.STOPPING, requeue=True)
    if observed.shutdown_requested:
        return Plan((), phase=Phase.STOPPING, requeue=True)
    return Plan((Action.SHUTDOWN,), phase=Phase.STOPPING, requeue=True)


def _run(desired: str, *extra: Action) -> Plan:
    actions = (Action.ENSURE, Action.START, *extra)
    if desired == Desired.PAUSED:
        return Plan((*actions, Action.SUSPEND), phase=Phase.PAUSED)
    return Plan(actions, phase=Phase.RUNNING)


def decide(observed: Observed) -> Plan:
    """The actions for one VM (table-tested in tests/unit/agent/test_reconciling.py)."""
    domain = observed.domain
    if observed.deleting:
        actions: tuple[Action, ...] = ()
        if domain is not None:
            actions = ((Action.DESTROY,) if domain.active else ()) + (Action.UNDEFINE,)
        return Plan((*actions, Action.CLEANUP))
    if not observed.has_machine or observed.desired is None:
        return Plan()
    if observed.restart_pending:
        if domain is not None and domain.active:
            return _graceful_stop(observed)
        return _run(observed.desired, Action.APPLY_RESTART)
    if observed.desired == Desired.STOPPED:
        if domain is not None and domain.active:
            return _graceful_stop(observed)
        if observed.phase in virtualmachines.GUEST_STOPPED:
            return Plan()
        return Plan(phase=Phase.STOPPED)
    # desired Running or Paused
    if domain is None:
        return _run(observed.desired)
    if domain.state == "shutting-down":
        return Plan(requeue=True)
    if not domain.active:
        if observed.phase in virtualmachines.GUEST_STOPPED:
            return Plan()  # wait for the controller (restartToken or desiredState)
        if observed.phase in _UP_PHASES:
            return Plan(phase=Phase.SUCCEEDED if domain.guest_shut_down else Phase.FAILED)
        return _run(observed.desired)
    if observed.desired == Desired.PAUSED:
        if domain.state == "running":
            return Plan((Action.SUSPEND,), phase=Phase.PAUSED)
        return Plan(phase=Phase.PAUSED)
    if domain.state == "paused":
        return Plan((Action.RESUME,), phase=Phase.RUNNING)
    return Plan(phase=Phase.RUNNING)
