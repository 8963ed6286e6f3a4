"""Session reports (``gateway/sessions``): full viewers only keep a session connected,
input is reported at most every ``input_every`` seconds, and each report is the whole
session (server-side apply drops what a report leaves out)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.gateway.sessions import SessionBook

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ("ns", "claim")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_connect_input_disconnect() -> None:
    book = SessionBook(input_every=10)
    s = book.connected(KEY, now=at(0))
    assert (s.connected, s.last_connected_at, s.last_input_at) == (True, at(0), None)
    first = book.input(KEY, now=at(1))
    assert first is not None and first.last_input_at == at(1)
    assert first.last_connected_at == at(0), "the whole session, every time"
    assert book.input(KEY, now=at(5)) is None, "throttled"
    late = book.input(KEY, now=at(11))
    assert late is not None and late.last_input_at == at(11)
    gone = book.disconnected(KEY, now=at(12))
    assert (gone.connected, gone.last_disconnected_at, gone.last_input_at) == (
        False, at(12), at(11),
    )  # fmt: skip
    assert len(book) == 0, "a claim without viewers is forgotten"


def test_two_viewers_keep_it_connected_until_the_last_leaves() -> None:
    book = SessionBook()
    book.connected(KEY, now=at(0))
    book.connected(KEY, now=at(1))
    one_left = book.disconnected(KEY, now=at(2))
    assert one_left.connected is True and one_left.last_disconnected_at is None
    both_left = book.disconnected(KEY, now=at(3))
    assert both_left.connected is False and both_left.last_disconnected_at == at(3)


def test_claims_are_booked_apart() -> None:
    book = SessionBook()
    book.connected(KEY, now=at(0))
    other = book.connected(("ns", "other"), now=at(1))
    assert other.last_connected_at == at(1)
    assert book.disconnected(("ns", "other"), now=at(2)).connected is False
    assert book.input(KEY, now=at(3)) is not None
