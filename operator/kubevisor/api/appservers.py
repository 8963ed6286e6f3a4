"""Application servers: the contract between the controller, which places published-
application sessions on a DesktopPool's VMs (``mode: Application``), and the display
gateway, which runs each session (docs/desktops.md "Published applications").

The gateway reaches a server's sshd with the operator's application key and runs the
pool's ``application`` there with X11 forwarding onto a per-session X display it owns. The
key pair lives in one Secret in the operator's namespace (:data:`KEY_SECRET_NAME`; the
controller creates it, the gateway reads the private half); each Application pool gets a
Secret of its own in the pool's namespace with only the public half
(:func:`pool_key_secret`), which the pool's server VMs reference, so the private key never
leaves the operator's namespace. Pure: names and fields only.
"""

from __future__ import annotations

from typing import Final

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
