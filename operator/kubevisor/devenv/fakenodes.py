"""Fake nodes on a real API server, for controller integration tests that run no agent.

A node here is what the controller reads of one: the agent's Lease (``api/nodes``, via
``testing.fake_node_lease``) and a core/v1 Node object. No agent runs, so the test writes
what an agent would (a VM's phase, under the agent's field manager) and what a kubelet or
an operator would (cordon, taints, a Lease renewed in the past to lose the node). The
node-loss, rebalancing and drain integration tests share this one set of steps; the real
thing (agents on simulated nodes, QEMU) is in tests/e2e.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubevisor.api import groups, nodes
from kubevisor.devenv import testing

G, V = groups.GROUP, groups.VERSION
LEASE_NS = nodes.LEASE_NAMESPACE
AGENT_FIELD_MANAGER = "kubevisor-agent"


class FakeNodes:
    """Clients over ``cluster`` (the ``cluster`` fixture) and the steps, for VMs in
    namespace ``ns`` made from ``machine`` (the spec every :meth:`vm` starts from)."""

    def __init__(self, cluster: Any, *, ns: str, machine: Mapping[str, Any]) -> None:
        import kubernetes

        # Any: the generated clients take plain dicts as bodies at runtime
        self.custom: Any = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core: Any = kubernetes.client.CoreV1Api(cluster.api)
        self.coord: Any = kubernetes.client.CoordinationV1Api(cluster.api)
        self.ns = ns
        self.machine = dict(machine)
        self.leases: set[str] = set()
        self.nodes: set[str] = set()
        for namespace in (ns, LEASE_NS):
            testing.ensure_namespace(self.core, namespace)

    # -- nodes ---------------------------------------------------------------------------

    def lease(
        self, name: str, *, capacity: Mapping[str, Any], labels: dict[str, str] | None = None
    ) -> None:
        """The node's agent Lease (valid for an hour, so it never expires by itself)."""
        body = testing.fake_node_lease(name, labels=labels, capacity=dict(capacity))
        self.coord.create_namespaced_lease(LEASE_NS, body)
        self.leases.add(name)

    def node(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """The node's core/v1 Node object (what a kubelet registers)."""
        self.core.create_node({"metadata": {"name": name, "labels": labels or {}}})
        self.nodes.add(name)

    def add(
        self, name: str, *, capacity: Mapping[str, Any], labels: dict[str, str] | None = None
    ) -> None:
        """Lease and Node object."""
        self.lease(name, capacity=capacity, labels=labels)
        self.node(name, labels=labels)

    def renewed(self, name: str, at: datetime) -> None:
        """Rewrite the Lease's renewTime (in the past: the node is lost)."""
        self.coord.patch_namespaced_lease(
            name, LEASE_NS, {"spec": {"renewTime": nodes.micro_time(at)}}
        )

    def cordon(self, name: str, on: bool = True) -> None:
        self.core.patch_node(name, {"spec": {"unschedulable": on}})

    def remove_nodes(self) -> None:
        """Delete every Lease and Node object this made."""
        from kubernetes.client.exceptions import ApiException

        for name in sorted(self.leases):
            try:
                self.coord.delete_namespaced_lease(name, LEASE_NS)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for name in sorted(self.nodes):
            try:
                self.core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self.leases.clear()
        self.nodes.clear()

    # -- VMs -----------------------------------------------------------------------------

    def vm(self, name: str, **spec: Any) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {**self.machine, **spec},
        }
        self.custom.create_namespaced_custom_object(G, V, self.ns, "virtualmachines", body)

    def obj(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(G, V, self.ns, "virtualmachines", name)
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.obj(name).get("status") or {})

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        """One condition of the VM ({} when absent)."""
        found = (c for c in self.status(name).get("conditions") or [] if c["type"] == type_)
        return next((dict(c) for c in found), {})

    def running(self, name: str, phase: str = "Running") -> None:
        """What the node's agent would report (its own field manager)."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": self.ns},
            "status": {"phase": phase},
        }
        self.custom.patch_namespaced_custom_object_status(
            G, V, self.ns, "virtualmachines", name, body, field_manager=AGENT_FIELD_MANAGER,
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    def events(self, name: str, reason: str, *, ns: str | None = None) -> list[Any]:
        """Events about ``name`` with ``reason`` (cluster-scoped objects': ``ns="default"``)."""
        return list(
            self.core.list_namespaced_event(
                ns or self.ns, field_selector=f"involvedObject.name={name},reason={reason}"
            ).items
        )

    def delete_all(self, *plurals: str) -> None:
        """Delete every object of ``plurals`` in the namespace, finalizers dropped (no
        agent releases them), and wait until they are gone."""
        for plural in plurals:
            from kubernetes.client.exceptions import ApiException

            for obj in self.custom.list_namespaced_custom_object(G, V, self.ns, plural)["items"]:
                name = obj["metadata"]["name"]
                try:
                    self.custom.patch_namespaced_custom_object(
                        G, V, self.ns, plural, name, {"metadata": {"finalizers": None}}
                    )
                    self.custom.delete_namespaced_custom_object(G, V, self.ns, plural, name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            testing.wait_for(
                functools.partial(self._none_left, plural),
                timeout=30,
                what=f"every {plural} in {self.ns} gone",
            )

    def _none_left(self, plural: str) -> bool:
        return not self.custom.list_namespaced_custom_object(G, V, self.ns, plural)["items"]
