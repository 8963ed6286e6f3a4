"""The controller's API client: the few reads and writes the reconcilers need.

kopf watches and dispatches; these calls fetch fresh objects, write with server-side
apply (which kopf's patches do not do) and post Events. Everything returns plain dicts
(the raw wire form); callers parse with the api models where they need types.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from typing import Any

import aiohttp
import yarl
from aiohttp import helpers as aiohttp_helpers
from kubernetes_asyncio import client, config

from kubevisor.api import events, groups
from kubevisor.controller import metrics

FIELD_MANAGER = "kubevisor-controller"
APPLY = "application/apply-patch+yaml"

Obj = dict[str, Any]


def env_proxy(url: str) -> tuple[str | None, dict[str, str]]:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``,
    ``NO_PROXY``; credentials from the proxy URL or ``~/.netrc``) and the headers it
    needs, as aiohttp's ``trust_env`` would find them; (None, {}) for no proxy."""
    try:
        proxy, auth = aiohttp_helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return None, {}
    return str(proxy), {} if auth is None else {"Proxy-Authorization": auth.encode()}


def _environment_read_once(api: client.ApiClient) -> None:
    """Read the proxy environment once, here, instead of on every request.

    kubernetes_asyncio opens its aiohttp session with ``trust_env=True``, so each
    request re-read ``~/.netrc`` and the proxy variables, in a thread hop (7% of the
    controller's samples at a 500-VM burst, bench/README.md). The session is replaced by
    one on the same connector without ``trust_env``, and the proxy the environment names
    for the API server, if any, is set on the client for every request; a kubeconfig's
    own ``proxy-url`` stays first. The controller does not use ``.netrc`` for the API
    server itself (it authenticates with a token or a client certificate)."""
    rest: Any = api.rest_client
    if not rest.proxy:
        proxy, headers = env_proxy(str(api.configuration.host or ""))
        if proxy is not None:
            rest.proxy = proxy
            rest.proxy_headers = {**(rest.proxy_headers or {}), **headers}
    old: aiohttp.ClientSession = rest.pool_manager
    # read_bufsize as kubernetes_asyncio sets it: watch events of large objects
    rest.pool_manager = aiohttp.ClientSession(
        connector=old.connector, trust_env=False, read_bufsize=2**21
    )
    old.detach()  # the connector now belongs to the new session


class Kube:
    """One shared API client for the process; create it inside the running loop."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._coord = client.CoordinationV1Api(api)
        self._core = client.CoreV1Api(api)
        self._series = events.Aggregator()
        """Events posted recently, to bump on repeat (``api/events``)."""

    @classmethod
    async def connect(cls) -> Kube:
        """From $KUBECONFIG (what ``--kubeconfig`` sets), else the in-cluster account."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        api = client.ApiClient()
        _environment_read_once(api)
        return cls(api)

    async def close(self) -> None:
        await self._api.close()

    async def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        """A namespaced kubevisor object, or None when it does not exist."""
        try:
            obj: Obj = await self._custom.get_namespaced_custom_object(
                groups.GROUP, groups.VERSION, namespace, plural, name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def get_cluster(self, plural: str, name: str) -> Obj | None:
        """A cluster-scoped kubevisor object (a RebalancePolicy), or None."""
        try:
            obj: Obj = await self._custom.get_cluster_custom_object(
                groups.GROUP, groups.VERSION, plural, name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def apply_cluster_status(
        self, plural: str, kind: str, name: str, status: Obj, *, field_manager: str
    ) -> Obj:
        """Server-side apply of a cluster-scoped object's ``status`` as ``field_manager``."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "status": status,
        }
        obj: Obj = await self._custom.patch_cluster_custom_object_status(
            groups.GROUP,
            groups.VERSION,
            plural,
            name,
            body,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY,  # type: ignore[call-arg]
        )
        metrics.api_write("apply", f"{plural}/status")
        return obj

    async def patch_node_condition(self, name: str, condition: Obj) -> None:
        """Set one condition on a core/v1 Node's status (strategic merge keyed by type,
        so the kubelet's conditions stay as they are)."""
        core: Any = self._core
        await core.patch_node_status(name, {"status": {"conditions": [condition]}})
        metrics.api_write("patch", "nodes/status")

    async def list_all(self, plural: str) -> list[Obj]:
        """Every object of a kubevisor kind in every namespace."""
        result = await self._custom.list_cluster_custom_object(groups.GROUP, groups.VERSION, plural)
        return list(result.get("items") or [])

    async def list_snapshot(self, plural: str) -> tuple[list[Obj], str | None]:
        """Every object of a kubevisor kind, with the list's resourceVersion (the point
        in time the list shows, for merging it with watch events)."""
        result = await self._custom.list_cluster_custom_object(groups.GROUP, groups.VERSION, plural)
        rv = (result.get("metadata") or {}).get("resourceVersion")
        return list(result.get("items") or []), str(rv) if rv else None

    async def list_namespaced(
        self, plural: str, namespace: str, *, label_selector: str | None = None
    ) -> list[Obj]:
        """The objects of a kubevisor kind in one namespace (optionally by label)."""
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        result = await self._custom.list_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, plural, **kwargs
        )
        return list(result.get("items") or [])

    async def delete(
        self, plural: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> bool:
        """Delete a namespaced kubevisor object; with ``resource_version`` only that
        version (409 when it changed meanwhile). False when it was gone already."""
        body: Obj = {}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        custom: Any = self._custom
        try:
            await custom.delete_namespaced_custom_object(
                groups.GROUP, groups.VERSION, namespace, plural, name, body=body
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        metrics.api_write("delete", plural)
        return True

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's ``data`` (base64 values), or None when it does not exist."""
        try:
            secret: Any = await self._core.read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(secret.data or {})

    async def create_secret(self, namespace: str, body: Obj) -> bool:
        """Create a Secret (and its namespace when missing); False when it exists."""
        core: Any = self._core
        for _ in range(2):
            try:
                await core.create_namespaced_secret(namespace, body)
                metrics.api_write("create", "secrets")
                return True
            except client.ApiException as exc:
                if exc.status == 409:
                    return False
                if exc.status != 404:
                    raise
            try:
                await core.create_namespace({"metadata": {"name": namespace}})
                metrics.api_write("create", "namespaces")
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        return False

    async def list_leases(self, namespace: str, label_selector: str) -> list[Obj]:
        """Leases as raw dicts (camelCase keys, like the custom objects)."""
        response: Any = await self._coord.list_namespaced_lease(
            namespace, label_selector=label_selector, _preload_content=False
        )
        data = json.loads(await response.read())
        return list(data.get("items") or [])

    async def list_nodes(self) -> list[Obj]:
        """core/v1 Node objects as raw dicts (cordon: ``spec.unschedulable``). Empty when
        the cluster has none or RBAC does not allow the list (an old chart): placement
        then treats no node as cordoned."""
        try:
            response: Any = await self._core.list_node(_preload_content=False)
        except client.ApiException as exc:
            if exc.status in (403, 404):
                return []
            raise
        data = json.loads(await response.read())
        return list(data.get("items") or [])

    async def set_unschedulable(self, name: str, unschedulable: bool) -> None:
        """Cordon or uncordon a Node (merge patch of ``spec.unschedulable``)."""
        await self._core.patch_node(name, {"spec": {"unschedulable": unschedulable}})
        metrics.api_write("patch", "nodes")

    async def create(self, plural: str, namespace: str, body: Obj) -> Obj | None:
        """Create a namespaced kubevisor object; None when it exists already (409)."""
        try:
            obj: Obj = await self._custom.create_namespaced_custom_object(
                groups.GROUP, groups.VERSION, namespace, plural, body
            )
        except client.ApiException as exc:
            if exc.status == 409:
                return None
            raise
        metrics.api_write("create", plural)
        return obj

    async def apply_status(
        self,
        plural: str,
        kind: str,
        namespace: str,
        name: str,
        status: Obj,
        *,
        field_manager: str = FIELD_MANAGER,
        resource_version: str | None = None,
    ) -> Obj:
        """Server-side apply of ``status`` as ``field_manager`` (kubevisor-controller
        unless told): the fields listed are ours, fields owned by others are left alone.
        With ``resource_version`` the API server refuses (409) an apply computed from an
        older object than the one it holds, so a stale read never reverts a newer write."""
        meta: Obj = {"name": name, "namespace": namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kind,
            "metadata": meta,
            "status": status,
        }
        obj: Obj = await self._custom.patch_namespaced_custom_object_status(
            groups.GROUP,
            groups.VERSION,
            namespace,
            plural,
            name,
            body,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY,  # type: ignore[call-arg]
        )
        metrics.api_write("apply", f"{plural}/status")
        return obj

    async def json_patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        ops: list[Obj],
        *,
        field_manager: str = FIELD_MANAGER,
    ) -> Obj:
        """A JSON patch (with ``test`` ops for optimistic concurrency on lists)."""
        obj: Obj = await self._custom.patch_namespaced_custom_object(
            groups.GROUP,
            groups.VERSION,
            namespace,
            plural,
            name,
            ops,
            field_manager=field_manager,
            _content_type="application/json-patch+json",  # type: ignore[call-arg]
        )
        metrics.api_write("patch", plural)
        return obj

    async def guarded_patch(
        self,
        plural: str,
        obj: Obj,
        ops: list[Obj],
        *,
        field_manager: str = FIELD_MANAGER,
    ) -> Obj:
        """A JSON patch of ``obj`` that applies only to the version read: a ``test`` of
        its resourceVersion goes first, so a write that raced ours fails the patch (422,
        :func:`is_conflict`) and the caller decides again from the newer object, instead
        of overwriting labels or finalizers someone else just changed."""
        meta = obj["metadata"]
        version = meta["resourceVersion"]
        guard = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
        return await self.json_patch(
            plural, meta["namespace"], meta["name"], [guard, *ops], field_manager=field_manager
        )

    async def create_event(
        self, obj: Obj, *, kind: str, type_: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``obj`` (a kubevisor object of ``kind``), reported by
        kubevisor-controller from this pod (its hostname); a repeat within
        :data:`events.REPEAT_WINDOW` raises the first one's count instead."""
        now = datetime.now(UTC)
        body = events.body(
            obj,
            kind=kind,
            type_=type_,
            reason=reason,
            message=message,
            component=FIELD_MANAGER,
            now=now,
            instance=socket.gethostname(),
        )
        core: Any = self._core
        verb = await events.post(core, self._series, body, now, gone=is_gone)
        metrics.api_write(verb, "events")


def is_conflict(exc: BaseException) -> bool:
    """A failed ``test`` op (422) or a stale resourceVersion (409): re-read and retry."""
    return isinstance(exc, client.ApiException) and exc.status in (409, 422)


def is_gone(exc: BaseException) -> bool:
    """The object was deleted meanwhile."""
    return isinstance(exc, client.ApiException) and exc.status == 404
