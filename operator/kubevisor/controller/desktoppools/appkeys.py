"""The application key: the ssh key pair with which the display gateway logs in to an
Application pool's servers (``api/appservers``).

One pair per operator, in the Secret ``appservers.KEY_SECRET_NAME`` of the operator's
namespace (created here when missing, like the display key); each Application pool gets a
Secret ``appservers.pool_key_secret(pool)`` in its own namespace holding the public
half, owned by the pool, which its server VMs reference (``spec.access.sshKeySecret``)
and which the agent injects into the guest at boot, and the servers' host key derived for
the pool (``appservers.host_key``), which the guest's sshd uses and the gateway checks.
The application key's private half never leaves the operator's namespace. A pool Secret
made before host keys existed is left as it is (delete it: it is made again with one).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kubevisor.api import appservers, groups, vmaccess
from kubevisor.controller.runtime import running


def generate() -> tuple[bytes, bytes]:
    """A fresh Ed25519 pair: (OpenSSH private key PEM, OpenSSH public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b" kubevisor-gateway\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_secret_body(private: bytes, public: bytes) -> dict[str, Any]:
    """The operator-namespace Secret with both halves."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": appservers.KEY_SECRET_NAME},
        "type": "Opaque",
        "data": {
            appservers.PRIVATE_KEY_FIELD: _b64(private),
            appservers.PUBLIC_KEY_FIELD: _b64(public),
        },
    }


def pool_secret_body(
    pool: Mapping[str, Any], public_b64: str, host_private: bytes
) -> dict[str, Any]:
    """The pool-namespace Secret with the public half and the servers' host key (private
    half), owned by the pool."""
    meta = pool.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": appservers.pool_key_secret(str(meta.get("name"))),
            "labels": {groups.LABEL_POOL: meta.get("name")},
            "ownerReferences": [
                {
                    "apiVersion": groups.API_VERSION,
                    "kind": "DesktopPool",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "type": "Opaque",
        "data": {
            appservers.PUBLIC_KEY_FIELD: public_b64,
            vmaccess.HOST_KEY_FIELD: _b64(host_private),
        },
    }


async def ensure(rt: running.Runtime, key_namespace: str, pool: Mapping[str, Any]) -> None:
    """The operator's pair exists, and the pool's public Secret does."""
    client = rt.client
    data = await client.secret_data(key_namespace, appservers.KEY_SECRET_NAME)
    if data is None:
        await client.create_secret(key_namespace, key_secret_body(*generate()))
        data = await client.secret_data(key_namespace, appservers.KEY_SECRET_NAME)
    public = (data or {}).get(appservers.PUBLIC_KEY_FIELD)
    private = (data or {}).get(appservers.PRIVATE_KEY_FIELD)
    if not public or not private:
        raise ValueError(
            f"Secret {key_namespace}/{appservers.KEY_SECRET_NAME} has no "
            f"data.{appservers.PUBLIC_KEY_FIELD} or data.{appservers.PRIVATE_KEY_FIELD}"
        )
    meta = pool.get("metadata") or {}
    ns = str(meta.get("namespace"))
    if await client.secret_data(ns, appservers.pool_key_secret(str(meta.get("name")))) is None:
        host, _ = appservers.host_key(base64.b64decode(private), str(meta.get("uid")))
        await client.create_secret(ns, pool_secret_body(pool, public, host))
