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
    parts = [p for p in (cmdline or "").split() if not p.startswith(CMDLINE_PARAM + "=")]
    encoded = base64.b64encode("\n".join(keys).encode()).decode("ascii")
    return " ".join([*parts, f"{CMDLINE_PARAM}={encoded}"])
