"""When to mint a bound claim's browser URLs, and what they carry (pure; the signing
itself is :mod:`kubevisor.api.displaytokens`).

A token admits new connections until it expires, so the controller mints a fresh one when
half of the pool's ``tokenTtlSeconds`` has passed (a URL shown to a user is always good
for at least half the TTL), when the claim was bound to another desktop, and when
shadowing was switched on or off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubevisor.api import displaytokens


@dataclass(frozen=True)
class Shown:
    """The token fields a claim's status shows now."""

    vm_name: str | None = None
    url: str | None = None
    view_url: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Minted:
    """Fresh URLs for a bound claim."""

    url: str
    view_url: str | None
    expires_at: datetime


def needs_mint(shown: Shown, *, vm: str, shadowing: bool, ttl: int, now: datetime) -> bool:
    """The claim (bound to ``vm``) needs fresh URLs."""
    if shown.url is None or shown.expires_at is None or shown.vm_name != vm:
        return True
    if shadowing != (shown.view_url is not None):
        return True
    return shown.expires_at - now <= timedelta(seconds=ttl / 2)


def mint(
    key: bytes,
    *,
    gateway: str,
    namespace: str,
    claim: str,
    uid: str,
    shadowing: bool,
    ttl: int,
    now: datetime,
    nonces: tuple[str, str],
) -> Minted:
    """The claim's URL (and, with ``shadowing``, its view-only URL), each with its own
    nonce, expiring ``ttl`` seconds from ``now``."""
    expires = int(now.timestamp()) + ttl

    def url(nonce: str, view_only: bool) -> str:
        grant = displaytokens.Grant(
            namespace=namespace,
            claim=claim,
            claim_uid=uid,
            expires_at=expires,
            nonce=nonce,
            view_only=view_only,
        )
        return displaytokens.desktop_url(gateway, displaytokens.mint(key, grant))

    return Minted(
        url=url(nonces[0], False),
        view_url=url(nonces[1], True) if shadowing else None,
        expires_at=datetime.fromtimestamp(expires, UTC),
    )
