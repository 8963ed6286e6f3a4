"""What the gateway reports of a claim's viewers in ``status.session`` (pure, clock passed
in): the controller's idle and disconnected timeouts read it (controller/desktopclaims/
logoff.py), and only the gateway sees connections and input.

Only full viewers count: a view-only viewer (help-desk shadowing) neither keeps a session
connected nor makes it active. Input is reported at most every ``input_every`` seconds
(a typing user would otherwise write the claim on every key); idle timeouts are minutes,
so a report up to that late changes nothing.

Each report is the whole ``session`` object: the gateway applies it with server-side apply
as the only owner of those fields, and a field left out of an apply would be removed. The
book keeps a claim only while it has viewers: the next connect reports
``lastConnectedAt`` = now, later than any input or disconnect before it, so what it
drops (``lastDisconnectedAt``, older input) no longer matters to a timeout while the
session is connected. Per process: a restarted gateway starts with an empty book.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kubevisor.api.desktopclaims import SessionStatus

#: Seconds between two input reports of one claim.
INPUT_EVERY_S = 10.0

Key = tuple[str, str]
"""(namespace, claim name)"""


@dataclass
class _Claim:
    viewers: int = 0
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    last_input_at: datetime | None = None
    reported_input_at: datetime | None = None


@dataclass
class SessionBook:
    """Full viewers per claim and when things happened; each method returns the session
    to report now, or None when nothing needs writing."""

    input_every: float = INPUT_EVERY_S
    _claims: dict[Key, _Claim] = field(default_factory=dict)

    def connected(self, key: Key, *, now: datetime) -> SessionStatus:
        c = self._claims.setdefault(key, _Claim())
        c.viewers += 1
        c.last_connected_at = now
        return self._status(c)

    def disconnected(self, key: Key, *, now: datetime) -> SessionStatus:
        c = self._claims.setdefault(key, _Claim())
        c.viewers = max(0, c.viewers - 1)
        if c.viewers == 0:
            c.last_disconnected_at = now
        status = self._status(c)
        if c.viewers == 0:
            del self._claims[key]  # the book holds only claims with viewers
        return status

    def input(self, key: Key, *, now: datetime) -> SessionStatus | None:
        c = self._claims.setdefault(key, _Claim())
        c.last_input_at = now
        due = (
            c.reported_input_at is None
            or (now - c.reported_input_at).total_seconds() >= self.input_every
        )
        if not due:
            return None
        c.reported_input_at = now
        return self._status(c)

    def __len__(self) -> int:
        return len(self._claims)

    @staticmethod
    def _status(c: _Claim) -> SessionStatus:
        return SessionStatus(
            connected=c.viewers > 0,
            last_connected_at=c.last_connected_at,
            last_disconnected_at=c.last_disconnected_at,
            last_input_at=c.last_input_at,
        )
