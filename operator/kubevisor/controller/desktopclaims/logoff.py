"""When a session ends by itself: the pool's idle, disconnected and maximum-session
timeouts (pure).

The display gateway reports what it sees in the claim's ``status.session``; before it
reported anything, "disconnected" and "idle" count from the binding, so a desktop nobody
opens is logged off after ``disconnectedTimeoutSeconds`` too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kubevisor.api.desktopclaims import ClaimReason, SessionStatus
from kubevisor.api.desktoppools import DesktopPoolSpec


def timed_out(
    spec: DesktopPoolSpec,
    bound_at: datetime | None,
    session: SessionStatus | None,
    *,
    now: datetime,
) -> tuple[ClaimReason, str] | None:
    """The timeout that ended the session (reason, sentence), or None while it lasts."""
    if bound_at is None:
        return None
    s = session or SessionStatus()
    if spec.max_session_seconds is not None and now >= bound_at + _s(spec.max_session_seconds):
        return (
            ClaimReason.SESSION_TIMEOUT,
            f"the session reached the pool's maxSessionSeconds ({spec.max_session_seconds} s)",
        )
    if spec.disconnected_timeout_seconds is not None and not s.connected:
        since = max(bound_at, s.last_disconnected_at or bound_at)
        if now >= since + _s(spec.disconnected_timeout_seconds):
            return (
                ClaimReason.DISCONNECTED_TIMEOUT,
                f"no viewer was connected for the pool's disconnectedTimeoutSeconds "
                f"({spec.disconnected_timeout_seconds} s)",
            )
    if spec.idle_timeout_seconds is not None:
        last = max(bound_at, s.last_input_at or bound_at, s.last_connected_at or bound_at)
        if now >= last + _s(spec.idle_timeout_seconds):
            return (
                ClaimReason.IDLE_TIMEOUT,
                f"no keyboard or mouse input for the pool's idleTimeoutSeconds "
                f"({spec.idle_timeout_seconds} s)",
            )
    return None


def _s(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)
