"""The agent's generic informer in both VM roles, against a real kube-apiserver.

One informer class, two server-side label selectors: the VMs placed on a node and the
VMs for which the node is a migration target. Each sees only its own VMs, follows a
label being set later, and drops a deleted VM from its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from kubevisor.agent.runtime import informing
from kubevisor.agent.vms import watching
from kubevisor.api import groups

pytestmark = pytest.mark.integration

NS = "default"
G, V, PLURAL = groups.GROUP, groups.VERSION, "virtualmachines"


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[client.ApiClient]:
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as c:
        yield c


class Changes:
    """Keys reported by an informer; :meth:`wait` waits (with a deadline) for a condition."""

    def __init__(self) -> None:
        self.keys: list[informing.Key] = []
        self._news = asyncio.Event()

    def __call__(self, key: informing.Key) -> None:
        self.keys.append(key)
        self._news.set()

    async def wait(self, what: str, check: Callable[[], bool], *, limit: float = 30) -> None:
        async def until() -> None:
            while True:
                self._news.clear()  # before the check: no await between them, nothing lost
                if check():
                    return
                await self._news.wait()

        try:
            await asyncio.wait_for(until(), limit)
        except TimeoutError:
            pytest.fail(f"timed out after {limit:.0f}s waiting for {what} (saw {self.keys})")


async def test_one_informer_serves_placed_and_incoming_roles(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    node = f"node-i-{suffix}"

    async def create(name: str, labels: dict[str, str]) -> None:
        await custom.create_namespaced_custom_object(
            G, V, NS, PLURAL,
            {"apiVersion": f"{G}/{V}", "kind": "VirtualMachine",
             "metadata": {"name": name, "labels": labels},
             "spec": {"templateRef": {"name": "none"}}},
        )  # fmt: skip

    arriving, placed, elsewhere = (f"{n}-{suffix}" for n in ("arriving", "placed", "elsewhere"))
    await create(arriving, {groups.LABEL_MIGRATION_TARGET: node, groups.LABEL_NODE: "other"})
    await create(placed, {groups.LABEL_NODE: node})
    await create(elsewhere, {groups.LABEL_MIGRATION_TARGET: "other"})
    incoming_changes, placed_changes = Changes(), Changes()
    incoming = watching.informer(api, watching.Role.INCOMING, node=node, on_change=incoming_changes)
    on_node = watching.informer(api, watching.Role.PLACED, node=node, on_change=placed_changes)
    tasks = [asyncio.create_task(i.run()) for i in (incoming, on_node)]
    try:
        await incoming_changes.wait("incoming list", incoming.synced.is_set)
        await placed_changes.wait("placed list", on_node.synced.is_set)
        assert set(incoming.cache) == {(NS, arriving)}
        assert set(on_node.cache) == {(NS, placed)}

        # This node becomes the target of the VM placed elsewhere: the watch delivers it.
        await custom.patch_namespaced_custom_object(
            G, V, NS, PLURAL, elsewhere,
            {"metadata": {"labels": {groups.LABEL_MIGRATION_TARGET: node}}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
        await incoming_changes.wait("relabelled VM", lambda: (NS, elsewhere) in incoming.cache)

        # Deleted: reported and gone from the cache.
        await custom.delete_namespaced_custom_object(G, V, NS, PLURAL, arriving)
        await incoming_changes.wait("deletion", lambda: (NS, arriving) not in incoming.cache)
        assert incoming_changes.keys.count((NS, arriving)) >= 2  # listed, then deleted
        assert set(incoming.cache) == {(NS, elsewhere)}
        assert set(on_node.cache) == {(NS, placed)}  # the other role saw none of it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in (arriving, placed, elsewhere):
            with contextlib.suppress(client.exceptions.ApiException):
                await custom.delete_namespaced_custom_object(G, V, NS, PLURAL, name)
