"""Application servers: the contract between the controller, which places published-
application sessions on a DesktopPool's VMs (``mode: Application``), and the display
gateway, which runs each session (docs/desktops.md "Published applications").

The gateway reaches a server's sshd with the operator's application key and runs the
pool's ``application`` there with X11 forwarding onto a per-session X display it owns. The
key pair lives in one Secret in the operator's namespace (:data:`KEY_SECRET_NAME`; the
controller creates it, the gateway reads the private half); each Application pool gets a
Secret of its own in the pool's namespace with only the public half
(:func:`pool_key_secret`), which the pool's server VMs reference, so the private key never
leaves the operator's namespace.

The servers' sshd host key is known, not trusted on first use: :func:`host_key` derives
one per pool from the application key and the pool's UID (an HMAC, so no pool's key tells
another's or the application key). The controller puts its private half in the pool's
Secret (``vmaccess.HOST_KEY_FIELD``: the guest installs it), and the gateway, which holds
the application key, derives the public half and checks the server with it
(``StrictHostKeyChecking=yes``); no further key is stored. Pure: names, fields, keys.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

#: Secret in the operator's namespace with the application key pair.
KEY_SECRET_NAME: Final = "kubevisor-app-key"
#: Its field with the OpenSSH private key (PEM text).
PRIVATE_KEY_FIELD: Final = "ssh-privatekey"
#: Its field (and the pool Secret's) with the OpenSSH public key line.
PUBLIC_KEY_FIELD: Final = "ssh-publickey"
#: The user the gateway logs in as on a server.
SSH_USER: Final = "root"
#: The port of a server's sshd.
SSH_PORT: Final = 22


def pool_key_secret(pool: str) -> str:
    """The Secret (in the pool's namespace) with the public key the pool's servers
    authorize. Pool names are at most 54 characters, so this stays a valid name."""
    return f"{pool}-app-ssh"


#: The name the gateway's ssh knows a server's host key under (``HostKeyAlias``): one
#: known_hosts file per session, so one name serves.
HOST_KEY_ALIAS: Final = "kubevisor-app-server"
_HOST_KEY_LABEL = b"kubevisor application server host key\0"


def host_key(app_private_pem: bytes, pool_uid: str) -> tuple[bytes, str]:
    """The host key of the servers of the pool with ``pool_uid``: (OpenSSH private key
    PEM, OpenSSH public key line), derived from the application key's private half."""
    app = serialization.load_ssh_private_key(app_private_pem, password=None)
    if not isinstance(app, ed25519.Ed25519PrivateKey):
        raise ValueError("the application key is not an Ed25519 key")
    seed = app.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    derived = hmac.new(seed, _HOST_KEY_LABEL + pool_uid.encode(), hashlib.sha256).digest()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(derived)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode("ascii")


def known_hosts(public: str) -> str:
    """The known_hosts text that makes ssh accept exactly ``public`` for
    :data:`HOST_KEY_ALIAS`."""
    return f"{HOST_KEY_ALIAS} {public}\n"
