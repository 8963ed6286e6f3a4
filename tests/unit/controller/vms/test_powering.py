"""runStrategy decision table (KubeVirt semantics) and restart tokens."""

from __future__ import annotations

import pytest

from kubevisor.api.virtualmachines import DesiredState, RunStrategy
from kubevisor.controller.vms import powering
from kubevisor.controller.vms.powering import PowerInputs

pytestmark = pytest.mark.unit

R, S, P = DesiredState.RUNNING, DesiredState.STOPPED, DesiredState.PAUSED
A, RR, M, H, ONCE = (
    RunStrategy.ALWAYS,
    RunStrategy.RERUN_ON_FAILURE,
    RunStrategy.MANUAL,
    RunStrategy.HALTED,
    RunStrategy.ONCE,
)


@pytest.mark.parametrize(
    ("inputs", "desired", "token"),
    [
        # Always: runs, restarts whatever stopped the guest.
        (PowerInputs(A), R, None),
        (PowerInputs(A, phase="Running", desired="Running"), R, None),
        (PowerInputs(A, phase="Failed", desired="Running"), R, "#1"),
        (PowerInputs(A, phase="Succeeded", desired="Running"), R, "#1"),
        (PowerInputs(A, phase="Failed", restart_token="#1", applied_restart_token="#1"), R, "#2"),
        # ... but not twice for the same failure (restart still pending).
        (PowerInputs(A, phase="Failed", restart_token="#1"), R, "#1"),
        (PowerInputs(A, phase="Stopped", desired="Stopped"), R, None),
        # RerunOnFailure: restart on Failed only.
        (PowerInputs(RR), R, None),
        (PowerInputs(RR, phase="Failed", desired="Running"), R, "#1"),
        (PowerInputs(RR, phase="Succeeded", desired="Running"), S, None),
        # Once: run until the guest stops, then stay stopped.
        (PowerInputs(ONCE), R, None),
        (PowerInputs(ONCE, phase="Running", desired="Running"), R, None),
        (PowerInputs(ONCE, phase="Succeeded", desired="Running"), S, None),
        (PowerInputs(ONCE, phase="Failed", desired="Running"), S, None),
        (PowerInputs(ONCE, phase="Stopped", desired="Stopped"), S, None),
        # Manual: what the user said last; guest stopping is not undone.
        (PowerInputs(M), S, None),
        (PowerInputs(M, manual_power="Running"), R, None),
        (PowerInputs(M, manual_power="Stopped", phase="Running"), S, None),
        (PowerInputs(M, manual_power="Running", phase="Succeeded"), S, None),
        # Halted: stopped; restart requests are not copied.
        (PowerInputs(H), S, None),
        (PowerInputs(H, phase="Running", restart_annotation="t1"), S, None),
        # Pause annotation.
        (PowerInputs(A, paused=True), P, None),
        (PowerInputs(H, paused=True), S, None),
        # User restart requests.
        (PowerInputs(A, restart_annotation="t1"), R, "t1"),
        (PowerInputs(A, restart_annotation="t1", restart_token="t1"), R, "t1"),
        (PowerInputs(A, restart_annotation="t1", restart_token="t1#3"), R, "t1#3"),
        (PowerInputs(A, restart_annotation="t2", restart_token="t1#3"), R, "t2"),
        # A restart brings back a Once / Manual VM whose guest stopped.
        (PowerInputs(ONCE, phase="Succeeded", desired="Stopped", restart_annotation="t9"), R, "t9"),
        (
            PowerInputs(M, phase="Succeeded", manual_power="Running", restart_annotation="t9"),
            R,
            "t9",
        ),
        # ... and, once the agent applied it, Once keeps it running.
        (
            PowerInputs(
                ONCE,
                phase="Running",
                desired="Running",
                restart_annotation="t9",
                restart_token="t9",
                applied_restart_token="t9",
            ),
            R,
            "t9",
        ),
    ],
)
def test_next_power_state(inputs: PowerInputs, desired: DesiredState, token: str | None) -> None:
    decision = powering.next_power_state(inputs)
    assert (decision.desired, decision.restart_token) == (desired, token)
    assert decision.restarted == (token != inputs.restart_token)


@pytest.mark.parametrize(
    ("token", "expected"), [(None, "#1"), ("", "#1"), ("abc", "abc#1"), ("abc#1", "abc#2")]
)
def test_bumped(token: str | None, expected: str) -> None:
    assert powering.bumped(token) == expected
    assert powering.base_token(expected) == ((token or "").partition("#")[0] or None)
