"""The retry schedule (CrashLoopBackOff shape) and its per-key reset rules."""

from __future__ import annotations

import pytest

from kubevisor.agent.runtime import backoff
from kubevisor.agent.vms.handling import refusal_reason
from kubevisor.api import conditions


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (5, 160.0), (6, 300.0), (7, 300.0), (1000, 300.0)],
)
def test_delay_doubles_from_10s_to_a_5min_cap(failures: int, expected: float) -> None:
    assert backoff.delay(failures) == expected


def test_delay_with_other_first() -> None:
    assert [backoff.delay(n, first=1.0) for n in (1, 2, 3, 9, 10)] == [1, 2, 4, 256, 300]


def test_same_fingerprint_counts_up_and_holds_until_due() -> None:
    b: backoff.Backoff[str] = backoff.Backoff()
    assert b.fail("k", "fp", now=0.0) == 10.0
    assert b.holding("k", "fp", now=5.0)
    assert not b.holding("k", "fp", now=10.0)
    assert b.fail("k", "fp", now=10.0) == 20.0
    assert b.failures("k") == 2


def test_changed_fingerprint_resets() -> None:
    b: backoff.Backoff[str] = backoff.Backoff()
    b.fail("k", "fp", now=0.0)
    b.fail("k", "fp", now=10.0)
    assert not b.holding("k", "new", now=11.0)
    assert b.failures("k") == 0
    assert b.fail("k", "new", now=11.0) == 10.0


def test_reset_on_success() -> None:
    b: backoff.Backoff[str] = backoff.Backoff()
    b.fail("k", None, now=0.0)
    b.reset("k")
    assert not b.holding("k", None, now=1.0)
    assert b.fail("k", None, now=1.0) == 10.0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "operation failed: Unable to find 'efi' firmware that is compatible",
            "FirmwareUnavailable",
        ),
        (
            "internal error: qemu unexpectedly closed the monitor: Could not open kernel",
            "HypervisorRefused",
        ),
        ("unsupported configuration: unknown CPU model 'nope'", "HypervisorRefused"),
    ],
)
def test_refusal_reason(message: str, reason: str) -> None:
    assert refusal_reason(message) == conditions.Reason(reason)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("r1", True), ("x" * 253, True), ("x" * 254, False), ("é" * 127, False), ("a\nb", False)],
)
def test_annotation_token_rule(value: str, ok: bool) -> None:
    from kubevisor.api import groups

    assert (groups.annotation_token_error(value) is None) is ok


@pytest.mark.parametrize(
    ("annotations", "bad"),
    [
        ({}, set()),
        ({"kubevisor.io/restart": "r1", "kubevisor.io/paused": "true"}, set()),
        ({"kubevisor.io/paused": "false", "kubevisor.io/power": "Stopped"}, set()),
        ({"kubevisor.io/power": "Running", "other.io/x": "anything"}, set()),
        ({"kubevisor.io/restart": "x" * 254}, {"kubevisor.io/restart"}),
        ({"kubevisor.io/paused": "yes"}, {"kubevisor.io/paused"}),
        ({"kubevisor.io/paused": "True"}, {"kubevisor.io/paused"}),
        ({"kubevisor.io/power": "on"}, {"kubevisor.io/power"}),
        (
            {"kubevisor.io/power": "x" * 300, "kubevisor.io/restart": "a\nb"},
            {"kubevisor.io/power", "kubevisor.io/restart"},
        ),
    ],
)
def test_annotation_errors(annotations: dict[str, str], bad: set[str]) -> None:
    """Issue 9: an annotation value the controller ignores is named, with a message short
    and printable enough for a condition."""
    from kubevisor.api import groups

    errors = groups.annotation_errors(annotations)
    assert set(errors) == bad
    for why in errors.values():
        assert why.isprintable() and len(why) < 200
