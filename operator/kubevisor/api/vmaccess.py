"""Remote access to a VM's guest by ssh: which keys the guest authorizes, and how they
reach it.

The one rule for both sides of the key contract: a VM (or its template) names a Secret in
its namespace (``access.sshKeySecret``); every line of every value of that Secret that is
an OpenSSH public key line is authorized for root in the guest. The controller reads the
Secret and appends the keys to the kernel command line it records in ``status.machine``
(``kv.sshkeys=<base64 of the key lines>``); the guest's init (hack/build-appguest.sh)
writes them to ``/root/.ssh/authorized_keys`` at every boot. Nothing is baked into an
image. Pure functions only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

from kubevisor.api import common

#: Kernel command line parameter the guest's init reads.
CMDLINE_PARAM: Final = "kv.sshkeys"
#: Most bytes of key lines carried (the x86 kernel command line holds 2048 bytes in all;
#: the rest is left for console, root and the guest's own parameters). Enough for a few
#: ed25519 or ECDSA keys, or one RSA-4096 key.
MAX_KEY_BYTES: Final = 1000
_KEY_LINE = re.compile(
    r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}(?: [^\x00-\x1f]*)?$"
)


class Access(common.Model):
    """How users reach the guest (``kubevisor ssh``, docs/remote-access.md)."""

    ssh_key_secret: common.ObjectName | None = None
    """Secret in the VM's namespace: every value line that is an OpenSSH public key
    (``ssh-ed25519 AAAA... comment``) is authorized for root in the guest, injected on
    the kernel command line at boot (the VM boots boot.kernel). A change applies at the
    next restart."""


class KeysRefused(ValueError):
    """The Secret holds no usable key, or more than the command line can carry."""


def authorized_keys(data: Mapping[str, str]) -> list[str]:
    """The public key lines of a Secret's ``data`` (base64 values), in key order, each
    once; other lines (comments, blanks, private keys) are ignored. Raises
    :class:`KeysRefused` when none is left or they exceed :data:`MAX_KEY_BYTES`."""
    keys: list[str] = []
    for field in sorted(data):
        try:
            text = base64.b64decode(data[field], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            line = line.strip()
            if _KEY_LINE.match(line) and line not in keys:
                keys.append(line)
    if not keys:
        raise KeysRefused("it holds no OpenSSH public key line (ssh-ed25519 AAAA... comment)")
    size = sum(len(k) + 1 for k in keys)
    if size > MAX_KEY_BYTES:
        raise KeysRefused(
            f"its {len(keys)} keys take {size} bytes, more than the {MAX_KEY_BYTES} the kernel"
            " command line carries; use fewer or shorter (ed25519) keys"
        )
    return keys


def with_keys(cmdline: str | None, keys: list[str]) -> str:
    """``cmdline`` with the keys parameter (any earlier one replaced)."""
    encoded = base64.b64encode("\n".join(keys).encode()).decode("ascii")
    return _with_param(cmdline, CMDLINE_PARAM, encoded)


def _with_param(cmdline: str | None, name: str, value: str) -> str:
    parts = [p for p in (cmdline or "").split() if not p.startswith(name + "=")]
    return " ".join([*parts, f"{name}={value}"])


# --- the guest's host key: how a client can know it ------------------------------------
#
# The same Secret may carry the guest's sshd host key (an OpenSSH Ed25519 private key)
# under HOST_KEY_FIELD; the controller puts its base64 body (the PEM without its armour
# lines and line breaks) on the command line as ``kv.hostkey=``, and the guest's init
# writes it back as /etc/ssh/ssh_host_ed25519_key instead of generating one. Whoever made
# the key knows the public half, so its ssh checks the host (the display gateway does, for
# application servers: api/appservers.host_key). Anyone who can read the VM's
# status.machine can read it too, as they can the authorized keys.

#: Secret field with the guest's host key (OpenSSH Ed25519 private key, PEM).
HOST_KEY_FIELD: Final = "ssh-host-ed25519-key"
#: Kernel command line parameter with its base64 body.
HOST_KEY_PARAM: Final = "kv.hostkey"
#: Most bytes of the body carried (an unencrypted Ed25519 key takes about 400).
MAX_HOST_KEY_BYTES: Final = 600
_PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_END = "-----END OPENSSH PRIVATE KEY-----"
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,3}$")


def host_key_body(data: Mapping[str, str]) -> str | None:
    """The base64 body of the Secret's host key (None when it carries none); raises
    :class:`KeysRefused` when the field is not an OpenSSH private key or too long."""
    encoded = data.get(HOST_KEY_FIELD)
    if not encoded:
        return None
    try:
        text = base64.b64decode(encoded, validate=True).decode("ascii").strip()
    except (binascii.Error, UnicodeDecodeError):
        raise KeysRefused(f"its {HOST_KEY_FIELD} is not base64 text") from None
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        raise KeysRefused(f"its {HOST_KEY_FIELD} is not an OpenSSH private key (PEM)")
    body = "".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
    if not _BASE64.match(body):
        raise KeysRefused(f"its {HOST_KEY_FIELD} is not an OpenSSH private key (PEM)")
    if len(body) > MAX_HOST_KEY_BYTES:
        raise KeysRefused(
            f"its {HOST_KEY_FIELD} takes {len(body)} bytes, more than the "
            f"{MAX_HOST_KEY_BYTES} the kernel command line carries; use an Ed25519 key"
        )
    return body


def with_host_key(cmdline: str | None, body: str) -> str:
    """``cmdline`` with the host key parameter (any earlier one replaced)."""
    return _with_param(cmdline, HOST_KEY_PARAM, body)


# --- ssh tickets: how `kubevisor ssh` is let through the gateway ---------------------
#
# The CLI proves it may reach the VM the Kubernetes way: with its own credentials it
# writes an annotation on the VM (so RBAC `patch virtualmachines` in that namespace is
# the permission) holding the SHA-256 of a random secret and an expiry; it hands the
# secret to the gateway, which reads the VM, finds the annotation by the hash, checks
# the expiry and that the secret was not used before, and only then opens a byte stream
# to the guest's port 22. The secret itself is never stored in the API server.

#: Annotation key prefix; the name part is ``ticket-<first 16 hex of the hash>``.
TICKET_PREFIX: Final = "ssh.kubevisor.io/ticket-"
#: Longest ticket life the gateway accepts (the CLI asks for less); clocks may differ a
#: little, which this also bounds.
MAX_TICKET_SECONDS: Final = 120
#: Query parameters of the gateway's ``/ssh`` websocket.
SSH_PATH: Final = "/ssh"
TICKET_QUERY: Final = "ticket"
#: The guest's sshd port.
SSH_PORT: Final = 22


class TicketRefused(Exception):
    """The secret does not match a live ticket on the VM; ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def ticket_annotation(secret: str, *, expires_at: int) -> tuple[str, str]:
    """The annotation (key, value) the CLI writes for ``secret`` (pure)."""
    digest = _digest(secret)
    return f"{TICKET_PREFIX}{digest[:16]}", f"{digest}.{expires_at}"


def check_ticket(annotations: Mapping[str, str], secret: str, *, now: float) -> tuple[str, int]:
    """The ticket's digest (the gateway's nonce) and expiry when ``secret`` matches a ticket on the
    VM that has not expired and was not written for longer than
    :data:`MAX_TICKET_SECONDS`; :class:`TicketRefused` otherwise."""
    if not 16 <= len(secret) <= 256:
        raise TicketRefused("Malformed", "the ticket is not a kubevisor ssh ticket")
    digest = _digest(secret)
    value = annotations.get(f"{TICKET_PREFIX}{digest[:16]}")
    if value is None:
        raise TicketRefused("NoTicket", "the VM carries no ssh ticket for this secret")
    stored, _, expiry = value.partition(".")
    if not hmac.compare_digest(stored, digest):
        raise TicketRefused("NoTicket", "the VM carries no ssh ticket for this secret")
    try:
        expires_at = int(expiry)
    except ValueError:
        raise TicketRefused("Malformed", "the ticket's expiry is not a number") from None
    if now >= expires_at:
        raise TicketRefused("Expired", f"the ticket expired {int(now - expires_at)} s ago")
    if expires_at - now > MAX_TICKET_SECONDS:
        raise TicketRefused("TooLong", f"the ticket is valid for more than {MAX_TICKET_SECONDS} s")
    return digest, expires_at


def link_local(mac: str) -> str:
    """The IPv6 link-local address a Linux guest gives the NIC with ``mac`` (modified
    EUI-64, RFC 4291 appendix A): how the gateway reaches a guest whose IPv4 address
    nobody reported, on the node's bridge (pure)."""
    octets = [int(part, 16) for part in mac.split(":")]
    if len(octets) != 6 or not all(0 <= o <= 255 for o in octets):
        raise ValueError(f"not a MAC address: {mac!r}")
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    groups_ = [f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups_)
