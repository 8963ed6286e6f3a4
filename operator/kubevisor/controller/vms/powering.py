"""runStrategy: the power state the controller asks for, and restart tokens.

Pure. KubeVirt's semantics, expressed over what the agent reports (``phase``) and what
the controller wrote last (``desired``), so a restarted controller decides the same:

- Always: Running; a guest that stopped on its own (Failed or Succeeded) is restarted.
- RerunOnFailure: Running; restarted after Failed, left Stopped after Succeeded.
- Once: Running until the guest stops on its own, then Stopped (a restart request
  runs it once more).
- Manual: what the user last asked with ``kubevisor.io/power`` (default Stopped); a
  guest that stops on its own stays stopped.
- Halted: Stopped.

A restart request (annotation ``kubevisor.io/restart`` set to a new token) is copied
into ``status.restartToken``; while it is pending (restartToken differs from the
agent's appliedRestartToken) the VM is wanted Running, which is also how ``kubevisor
start`` brings back a Once/RerunOnFailure/Manual VM whose guest shut down. Automatic
restarts append ``#<n>`` to the token, so the user's token stays recognisable and a new
annotation is told apart from one already copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubevisor.api import virtualmachines
from kubevisor.api.virtualmachines import DesiredState, RunStrategy, VirtualMachinePhase


@dataclass(frozen=True)
class PowerInputs:
    """What the decision reads; all from the VM object."""

    run_strategy: RunStrategy
    phase: str | None = None
    """status.phase as the agent reports it."""
    desired: str | None = None
    """status.desiredState the controller wrote last."""
    restart_annotation: str | None = None
    """metadata.annotations[kubevisor.io/restart]."""
    restart_token: str | None = None
    """status.restartToken."""
    applied_restart_token: str | None = None
    """status.appliedRestartToken (agent)."""
    paused: bool = False
    """metadata.annotations[kubevisor.io/paused] == "true"."""
    manual_power: str | None = None
    """metadata.annotations[kubevisor.io/power]: Running or Stopped (Manual only)."""


@dataclass(frozen=True)
class PowerDecision:
    """What the controller writes: ``desired`` and ``restart_token``; ``restarted`` is
    True when this decision requests a (new) restart, so the machine may be refreshed."""

    desired: DesiredState
    restart_token: str | None
    restarted: bool = False


def base_token(token: str | None) -> str | None:
    """The user's part of a token (``"abc#2"`` -> ``"abc"``); the rule is the API's."""
    return virtualmachines.restart_request(token)


def bumped(token: str | None) -> str:
    """The next automatic restart token after ``token``."""
    base, _, count = (token or "").partition("#")
    n = int(count) + 1 if count.isdigit() else 1
    return f"{base}#{n}"


def next_power_state(inputs: PowerInputs) -> PowerDecision:
    """The desired power state and restart token for the inputs (see module docstring)."""
    strategy = inputs.run_strategy
    token = inputs.restart_token
    restarted = False
    if strategy == RunStrategy.HALTED:
        return PowerDecision(DesiredState.STOPPED, token)
    # A user's new restart request.
    annotation = inputs.restart_annotation
    if annotation and annotation != base_token(token):
        token, restarted = annotation, True
    pending = token is not None and token != inputs.applied_restart_token
    stopped_by_guest = inputs.phase in virtualmachines.GUEST_STOPPED and not pending
    auto_restart = (strategy == RunStrategy.ALWAYS and stopped_by_guest) or (
        strategy == RunStrategy.RERUN_ON_FAILURE
        and inputs.phase == VirtualMachinePhase.FAILED
        and not pending
    )
    if auto_restart:
        token, restarted, pending = bumped(token), True, True
    if pending:
        running = True
    elif strategy in (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE):
        running = not stopped_by_guest
    elif strategy == RunStrategy.ONCE:
        running = inputs.desired != DesiredState.STOPPED and not stopped_by_guest
    else:  # Manual
        running = inputs.manual_power == DesiredState.RUNNING and not stopped_by_guest
    if not running:
        return PowerDecision(DesiredState.STOPPED, token, restarted)
    desired = DesiredState.PAUSED if inputs.paused else DesiredState.RUNNING
    return PowerDecision(desired, token, restarted)
