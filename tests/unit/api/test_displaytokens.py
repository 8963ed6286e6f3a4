"""Display tokens (``api/displaytokens``): what the controller mints the gateway admits, and
nothing else — not a token signed with another key, edited, expired or cut short."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from kubevisor.api import displaytokens
from kubevisor.api.displaytokens import Grant, Refusal, TokenRefused

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
GRANT = Grant(
    namespace="default",
    claim="alice-1",
    claim_uid="0b3f6a2e-9c1d-4e8a-b7f5-2d6c8e1a4f90",
    expires_at=1_000_300,
    nonce="n-1",
)


def test_a_minted_token_verifies_to_its_grant() -> None:
    token = displaytokens.mint(KEY, GRANT)
    assert displaytokens.verify(KEY, token, now=1_000_000) == GRANT


def test_view_only_survives_the_round_trip() -> None:
    viewer = Grant(**{**GRANT.__dict__, "view_only": True})
    assert displaytokens.verify(KEY, displaytokens.mint(KEY, viewer), now=1_000_000).view_only


def test_each_nonce_gives_a_distinct_token() -> None:
    again = Grant(**{**GRANT.__dict__, "nonce": "n-2"})
    assert displaytokens.mint(KEY, GRANT) != displaytokens.mint(KEY, again)


def _tampered() -> str:
    _payload, signature = displaytokens.mint(KEY, GRANT).split(".")
    forged = displaytokens.mint(KEY, Grant(**{**GRANT.__dict__, "claim": "bob-1"}))
    return f"{forged.split('.')[0]}.{signature}"


@pytest.mark.parametrize(
    ("token", "now", "reason"),
    [
        (displaytokens.mint(KEY, GRANT), 1_000_300, Refusal.EXPIRED),
        (displaytokens.mint(KEY, GRANT), 2_000_000, Refusal.EXPIRED),
        (displaytokens.mint(OTHER_KEY, GRANT), 1_000_000, Refusal.BAD_SIGNATURE),
        (_tampered(), 1_000_000, Refusal.BAD_SIGNATURE),
        (displaytokens.mint(KEY, GRANT)[:-3], 1_000_000, Refusal.BAD_SIGNATURE),
        ("", 1_000_000, Refusal.MALFORMED),
        ("no-dot", 1_000_000, Refusal.MALFORMED),
        ("a.b.c", 1_000_000, Refusal.MALFORMED),
        ("x" * 2000 + ".y", 1_000_000, Refusal.MALFORMED),
    ],
)
def test_refusals(token: str, now: float, reason: Refusal) -> None:
    with pytest.raises(TokenRefused) as refused:
        displaytokens.verify(KEY, token, now=now)
    assert refused.value.reason is reason


def test_a_signed_but_unreadable_payload_is_malformed() -> None:
    payload = "bm90LWpzb24"  # base64url of "not-json"
    token = f"{payload}.{displaytokens._sign(KEY, payload)}"
    with pytest.raises(TokenRefused) as refused:
        displaytokens.verify(KEY, token, now=0)
    assert refused.value.reason is Refusal.MALFORMED


@pytest.mark.parametrize("key", [b"", b"short", bytes(31)])
def test_short_keys_are_refused_on_both_sides(key: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        displaytokens.mint(key, GRANT)
    with pytest.raises(ValueError, match="at least 32"):
        displaytokens.verify(key, "a.b", now=0)


def test_the_url_carries_the_token_to_the_websocket_path() -> None:
    token = displaytokens.mint(KEY, GRANT)
    url = displaytokens.desktop_url("https://gw.example:8443/", token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "gw.example:8443", "/vnc.html")
    path = parse_qs(parts.query)["path"][0]
    assert path == displaytokens.websocket_path(token)
    assert parse_qs(urlsplit(path).query)[displaytokens.TOKEN_QUERY] == [token]
