"""Reads through the API server: the display key Secret, claims, VMs' displays, and
for published applications the pool's command, the server's sshd and the app key."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.api import appservers, desktoppools, displaytokens, groups, kinds
from kubevisor.gateway import admitting, sshtunnel


class KeyUnavailable(Exception):
    """The signing key Secret is missing or has no usable ``key`` field."""


async def load_config(kubeconfig: str | None) -> None:
    """Load ``kubeconfig`` if given, else the in-cluster account, else the default file."""
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()


def api_client() -> client.ApiClient:
    """A client over the loaded configuration (use as ``async with``)."""
    return client.ApiClient()


class Reader:
    """The three reads admission needs, each one GET (no cache: a claim that just ended
    must refuse at once)."""

    def __init__(self, api: client.ApiClient, *, key_namespace: str) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._key_namespace = key_namespace

    async def key(self) -> bytes:
        """The signing key (read each admission, so a rotated key takes effect at once)."""
        try:
            secret = await self._core.read_namespaced_secret(
                displaytokens.KEY_SECRET_NAME, self._key_namespace
            )
        except ApiException as exc:
            raise KeyUnavailable(
                f"Secret {self._key_namespace}/{displaytokens.KEY_SECRET_NAME}: {exc.reason}"
            ) from exc
        data = secret.data or {}
        encoded = data.get(displaytokens.KEY_SECRET_FIELD)
        if not encoded:
            raise KeyUnavailable(
                f"Secret {self._key_namespace}/{displaytokens.KEY_SECRET_NAME} has no "
                f"{displaytokens.KEY_SECRET_FIELD!r} field"
            )
        return base64.b64decode(encoded)

    async def claim(self, namespace: str, name: str) -> admitting.ClaimFacts | None:
        """The claim's UID, phase and VM; None when it does not exist."""
        obj = await self._get(kinds.DESKTOPCLAIM.plural, namespace, name)
        if obj is None:
            return None
        status = obj.get("status") or {}
        return admitting.ClaimFacts(
            uid=str(obj["metadata"]["uid"]),
            phase=_str(status.get("phase")),
            vm_name=_str(status.get("vmName")),
            pool=_str(((obj.get("spec") or {}).get("poolRef") or {}).get("name")),
        )

    async def application(self, namespace: str, pool: str) -> str | None:
        """The command of an Application pool; None for a desktop pool (or none)."""
        obj = await self._get(kinds.DESKTOPPOOL.plural, namespace, pool)
        spec = (obj or {}).get("spec") or {}
        if spec.get("mode") != desktoppools.APPLICATION:
            return None
        return _str(spec.get("application"))

    async def server(
        self, namespace: str, vm_name: str, application: str
    ) -> admitting.DisplayFacts | None:
        """An application server's node and sshd, found as ``kubevisor ssh`` finds a
        VM's (``sshtunnel.target_of``: the reported address, else the guest's link-local
        one on its tap's bridge); None when the VM does not exist."""
        obj = await self._get(kinds.VIRTUALMACHINE.plural, namespace, vm_name)
        if obj is None:
            return None
        status = obj.get("status") or {}
        found = sshtunnel.target_of(obj)
        return admitting.DisplayFacts(
            node_name=_str(status.get("nodeName")),
            type=admitting.SSH,
            host=found.address if isinstance(found, sshtunnel.Target) else None,
            port=appservers.SSH_PORT,
            application=application,
            tap=found.tap if isinstance(found, sshtunnel.Target) else None,
            pool_uid=_pool_owner(obj),
        )

    async def app_key(self) -> bytes:
        """The private application key (OpenSSH PEM) the gateway logs in to servers with."""
        try:
            secret = await self._core.read_namespaced_secret(
                appservers.KEY_SECRET_NAME, self._key_namespace
            )
        except ApiException as exc:
            raise KeyUnavailable(
                f"Secret {self._key_namespace}/{appservers.KEY_SECRET_NAME}: {exc.reason}"
            ) from exc
        encoded = (secret.data or {}).get(appservers.PRIVATE_KEY_FIELD)
        if not encoded:
            raise KeyUnavailable(
                f"Secret {self._key_namespace}/{appservers.KEY_SECRET_NAME} has no "
                f"{appservers.PRIVATE_KEY_FIELD!r} field"
            )
        return base64.b64decode(encoded)

    async def display(self, namespace: str, vm_name: str) -> admitting.DisplayFacts | None:
        """The VM's node and VNC endpoint; None when the VM does not exist."""
        obj = await self._get(kinds.VIRTUALMACHINE.plural, namespace, vm_name)
        if obj is None:
            return None
        status = obj.get("status") or {}
        display = status.get("display") or {}
        port = display.get("port")
        return admitting.DisplayFacts(
            node_name=_str(status.get("nodeName")),
            type=_str(display.get("type")),
            host=_str(display.get("host")),
            port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        )

    async def vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The whole VirtualMachine (``gateway.sshtunnel`` reads its tickets, phase and
        NIC); None when it does not exist."""
        return await self._get(kinds.VIRTUALMACHINE.plural, namespace, name)

    async def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                groups.GROUP, groups.VERSION, namespace, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _pool_owner(obj: dict[str, Any]) -> str | None:
    """The UID of the DesktopPool owning a server VM (its controller reference)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "DesktopPool" and ref.get("controller"):
            return _str(ref.get("uid"))
    return None
