"""Replay bookkeeping (``gateway/replays``): a nonce admits once; the ledger forgets a
nonce only when its token has expired (and would be refused as expired anyway)."""

from __future__ import annotations

import pytest

from kubevisor.gateway.replays import NonceLedger

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uses", "expected"),
    [
        # (nonce, expires_at, now) -> admitted?
        ([("a", 100, 10)], [True]),
        ([("a", 100, 10), ("a", 100, 11)], [True, False]),
        ([("a", 100, 10), ("b", 100, 11)], [True, True]),
        ([("a", 100, 10), ("a", 100, 99.9)], [True, False]),
        # at expiry the ledger forgets; verify() already refuses the token as expired
        ([("a", 100, 10), ("a", 200, 100)], [True, True]),
        ([("a", 100, 10), ("b", 300, 50), ("b", 300, 150)], [True, True, False]),
    ],
    ids=["first", "replay", "two-nonces", "replay-before-expiry", "forgotten-at-expiry",
         "other-expiry-kept"],
)  # fmt: skip
def test_use(uses: list[tuple[str, int, float]], expected: list[bool]) -> None:
    ledger = NonceLedger()
    assert [ledger.use(n, expires_at=e, now=t) for n, e, t in uses] == expected


def test_the_ledger_holds_only_live_nonces() -> None:
    ledger = NonceLedger()
    for i in range(50):
        ledger.use(f"n{i}", expires_at=100 + i, now=0)
    assert len(ledger) == 50
    ledger.use("late", expires_at=1000, now=125)
    assert len(ledger) == 25  # n26..n49 and "late"


def test_seen_asks_without_using() -> None:
    """The page's "why was I refused" (``/admission``) must not burn the token."""
    ledger = NonceLedger()
    assert not ledger.seen("a", now=10)
    assert not ledger.seen("a", now=11)  # asking twice records nothing
    assert ledger.use("a", expires_at=100, now=12)
    assert ledger.seen("a", now=13)
    assert not ledger.seen("a", now=100)  # forgotten at expiry, as use() forgets it
