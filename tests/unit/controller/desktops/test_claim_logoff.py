"""Session timeouts: maximum session, disconnected (from binding when nobody connected),
idle (from the last input or connection)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api.desktopclaims import ClaimReason, SessionStatus
from kubevisor.api.desktoppools import DesktopPoolSpec
from kubevisor.controller.desktopclaims import logoff

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(**kw: Any) -> DesktopPoolSpec:
    return DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 1, **kw})


def _at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


@pytest.mark.parametrize(
    ("case", "spec", "session", "now", "want"),
    [
        ("no timeouts", _spec(), None, _at(10**6), None),
        ("max session not reached", _spec(maxSessionSeconds=100), None, _at(99), None),
        (
            "max session reached",
            _spec(maxSessionSeconds=100),
            None,
            _at(100),
            ClaimReason.SESSION_TIMEOUT,
        ),
        (
            "max session ends even a connected, active session",
            _spec(maxSessionSeconds=100),
            SessionStatus(connected=True, last_input_at=_at(99)),
            _at(100),
            ClaimReason.SESSION_TIMEOUT,
        ),
        (
            "never connected: counted from binding",
            _spec(disconnectedTimeoutSeconds=30),
            None,
            _at(30),
            ClaimReason.DISCONNECTED_TIMEOUT,
        ),
        (
            "connected now: no disconnect timeout",
            _spec(disconnectedTimeoutSeconds=30),
            SessionStatus(connected=True),
            _at(1000),
            None,
        ),
        (
            "disconnected recently",
            _spec(disconnectedTimeoutSeconds=30),
            SessionStatus(connected=False, last_disconnected_at=_at(100)),
            _at(129),
            None,
        ),
        (
            "disconnected long ago",
            _spec(disconnectedTimeoutSeconds=30),
            SessionStatus(connected=False, last_disconnected_at=_at(100)),
            _at(130),
            ClaimReason.DISCONNECTED_TIMEOUT,
        ),
        (
            "idle: recent input",
            _spec(idleTimeoutSeconds=60),
            SessionStatus(connected=True, last_input_at=_at(500)),
            _at(559),
            None,
        ),
        (
            "idle: no input for the timeout",
            _spec(idleTimeoutSeconds=60),
            SessionStatus(connected=True, last_input_at=_at(500)),
            _at(560),
            ClaimReason.IDLE_TIMEOUT,
        ),
        (
            "idle: a fresh connection counts as activity",
            _spec(idleTimeoutSeconds=60),
            SessionStatus(connected=True, last_input_at=_at(10), last_connected_at=_at(500)),
            _at(540),
            None,
        ),
    ],
)
def test_timed_out(
    case: str,
    spec: DesktopPoolSpec,
    session: SessionStatus | None,
    now: datetime,
    want: ClaimReason | None,
) -> None:
    got = logoff.timed_out(spec, T0, session, now=now)
    assert (got[0] if got else None) is want, case


def test_not_bound_never_times_out() -> None:
    assert logoff.timed_out(_spec(maxSessionSeconds=1), None, None, now=_at(10)) is None
