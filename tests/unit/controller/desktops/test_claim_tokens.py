"""Claim URLs: minted when missing, for another desktop, when shadowing changes, and at
half the TTL; the token verifies with the key and carries the claim, view-only for the
shadow URL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from kubevisor.api import displaytokens
from kubevisor.controller.desktopclaims import tokens

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"k" * 32


def _shown(**kw: object) -> tokens.Shown:
    base: dict[str, object] = {
        "vm_name": "d1",
        "url": "u",
        "view_url": None,
        "expires_at": NOW + timedelta(seconds=300),
    }
    return tokens.Shown(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "shown", "shadowing", "now", "want"),
    [
        ("fresh", _shown(), False, NOW, False),
        ("nothing shown", tokens.Shown(), False, NOW, True),
        ("another desktop", _shown(vm_name="d2"), False, NOW, True),
        ("shadowing switched on", _shown(), True, NOW, True),
        ("shadowing switched off", _shown(view_url="v"), False, NOW, True),
        ("before half the ttl", _shown(), False, NOW + timedelta(seconds=149), False),
        ("at half the ttl", _shown(), False, NOW + timedelta(seconds=150), True),
    ],
)
def test_needs_mint(
    case: str, shown: tokens.Shown, shadowing: bool, now: datetime, want: bool
) -> None:
    assert tokens.needs_mint(shown, vm="d1", shadowing=shadowing, ttl=300, now=now) is want, case


def _token(url: str) -> str:
    path = unquote(parse_qs(urlparse(url).query)["path"][0])
    return parse_qs(urlparse(path).query)[displaytokens.TOKEN_QUERY][0]


def test_minted_urls_verify_and_carry_the_claim() -> None:
    m = tokens.mint(
        KEY,
        gateway="https://desk.example/",
        namespace="ns",
        claim="c",
        uid="u-1",
        shadowing=True,
        ttl=300,
        now=NOW,
        nonces=("n1", "n2"),
    )
    assert m.url.startswith("https://desk.example/vnc.html?")
    assert m.expires_at == NOW + timedelta(seconds=300)
    full = displaytokens.verify(KEY, _token(m.url), now=NOW.timestamp())
    assert (full.namespace, full.claim, full.claim_uid, full.view_only) == ("ns", "c", "u-1", False)
    assert m.view_url is not None
    view = displaytokens.verify(KEY, _token(m.view_url), now=NOW.timestamp())
    assert view.view_only and view.nonce != full.nonce


def test_no_view_url_without_shadowing() -> None:
    m = tokens.mint(
        KEY,
        gateway="http://g",
        namespace="ns",
        claim="c",
        uid="u",
        shadowing=False,
        ttl=60,
        now=NOW,
        nonces=("a", "b"),
    )
    assert m.view_url is None
