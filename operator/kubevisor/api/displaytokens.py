"""Display tokens: the one rule by which the controller hands a user a desktop's browser
URL and the display gateway decides whether to let that browser in.

A token is a signed, expiring grant for one DesktopClaim: the controller mints it into the
claim's ``status.url``; the gateway verifies the signature and the expiry here, then asks
the API server whether the claim named in the grant (same UID, so a deleted and re-created
claim of the same name does not inherit it) is still bound, and which VM and display it
leads to. Both sides read the signing key from one Secret, so neither needs the other to be
up. Pure functions only: no clock, no randomness, no I/O inside; callers pass ``now`` and
the nonce.

Wire form: ``<payload>.<signature>``, both unpadded base64url; the payload is the grant as
compact JSON with sorted keys, the signature HMAC-SHA256 over the payload text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import quote

from kubevisor.api import nodes

#: Secret (in the operator's namespace) holding the signing key, shared by the controller
#: (which mints) and the gateway (which verifies).
KEY_SECRET_NAME: Final = "kubevisor-display-key"
#: Field of that Secret's ``data`` holding the key bytes.
KEY_SECRET_FIELD: Final = "key"
#: Fewest key bytes accepted: a shorter key is a configuration error, not a weak default.
MIN_KEY_BYTES: Final = 32
#: How long a minted token admits a browser unless the pool says otherwise.
DEFAULT_TTL_SECONDS: Final = 300
#: Query parameter of the gateway's websocket path carrying the token.
TOKEN_QUERY: Final = "token"
#: Longest token accepted before any decoding (claim names are at most 253 characters).
MAX_TOKEN_LENGTH: Final = 1024


class Refusal(StrEnum):
    """Why a token does not admit anyone (the gateway logs and counts these)."""

    MALFORMED = "Malformed"
    BAD_SIGNATURE = "BadSignature"
    EXPIRED = "Expired"


class TokenRefused(Exception):
    """The token is not a valid, unexpired grant; ``reason`` says which check failed."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a token admits: one claim's desktop, until ``expires_at``.

    ``nonce`` makes every minted token distinct, so the gateway can refuse a token that was
    already used (a replay); ``view_only`` admits a viewer who cannot type (shadowing).
    """

    namespace: str
    claim: str
    claim_uid: str
    expires_at: int
    """Unix seconds."""
    nonce: str
    view_only: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"display signing key has {len(key)} bytes, needs at least {MIN_KEY_BYTES}"
        )


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def mint(key: bytes, grant: Grant) -> str:
    """The token for ``grant``, signed with ``key``."""
    _check_key(key)
    body = {
        "ns": grant.namespace,
        "c": grant.claim,
        "u": grant.claim_uid,
        "e": grant.expires_at,
        "n": grant.nonce,
        "v": grant.view_only,
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_sign(key, payload)}"


def verify(key: bytes, token: str, *, now: float) -> Grant:
    """The grant ``token`` carries, if its signature is ``key``'s and it has not expired.

    Raises :class:`TokenRefused`. The signature is checked before the payload is parsed,
    so nothing an outsider wrote is decoded as JSON.
    """
    _check_key(key)
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenRefused(Refusal.MALFORMED, "the token is not <payload>.<signature>")
    payload, signature = token.split(".")
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise TokenRefused(Refusal.BAD_SIGNATURE, "the token's signature does not match")
    try:
        body = json.loads(_unb64(payload))
        grant = Grant(
            namespace=_text(body["ns"]),
            claim=_text(body["c"]),
            claim_uid=_text(body["u"]),
            expires_at=_integer(body["e"]),
            nonce=_text(body["n"]),
            view_only=body["v"] is True,
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise TokenRefused(Refusal.MALFORMED, f"the token's payload is unreadable: {exc}") from exc
    if now >= grant.expires_at:
        raise TokenRefused(
            Refusal.EXPIRED, f"the token expired {int(now - grant.expires_at)} s ago"
        )
    return grant


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("expected an integer")
    return value


def websocket_path(token: str) -> str:
    """The gateway's websocket path for ``token`` (what noVNC's ``path`` parameter holds)."""
    return f"websockify?{TOKEN_QUERY}={token}"


def desktop_url(gateway_base: str, token: str) -> str:
    """The browser URL a claim's status shows: the gateway's noVNC page, told which
    websocket path (with the token) to open."""
    base = gateway_base.rstrip("/")
    return f"{base}/vnc.html?autoconnect=1&path={quote(websocket_path(token), safe='')}"


#: Environment variable naming the operator's namespace, where the key Secret lives (the
#: chart sets it from the pod's own namespace); unset: the Lease namespace
#: (``KUBEVISOR_LEASE_NAMESPACE``, default kubevisor-system), which the chart installs
#: into as well.
ENV_KEY_NAMESPACE: Final = "KUBEVISOR_NAMESPACE"


def key_namespace(environ: Mapping[str, str]) -> str:
    """The namespace of the key Secret, for the controller and the gateway alike."""
    return environ.get(ENV_KEY_NAMESPACE) or nodes.LEASE_NAMESPACE


def key_from_secret_data(data: Mapping[str, str]) -> bytes:
    """The signing key from a Secret's ``data`` (base64); ValueError when missing or
    shorter than :data:`MIN_KEY_BYTES`."""
    raw = data.get(KEY_SECRET_FIELD)
    if not raw:
        raise ValueError(f"Secret {KEY_SECRET_NAME} has no data.{KEY_SECRET_FIELD}")
    key = base64.b64decode(raw)
    _check_key(key)
    return key


def key_secret_body(key: bytes) -> dict[str, object]:
    """The Secret the controller creates when none exists (``key`` from a CSPRNG)."""
    _check_key(key)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": KEY_SECRET_NAME},
        "type": "Opaque",
        "data": {KEY_SECRET_FIELD: base64.b64encode(key).decode("ascii")},
    }
