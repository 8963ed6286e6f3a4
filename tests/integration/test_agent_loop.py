"""The whole agent loop against a real kube-apiserver and libvirt's test driver.

The controller's part is played by the test: it labels the VM for the node and applies
the controller-owned status fields with server-side apply (field manager
kubevisor-controller), exactly as docs/architecture.md says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

testing.require_module("libvirt")

from kubernetes_asyncio import client, config  # noqa: E402

from kubevisor.agent import disks, domainxml  # noqa: E402
from kubevisor.agent import libvirt as libvirt_adapter  # noqa: E402
from kubevisor.agent.kernel import bridges as netsegments  # noqa: E402
from kubevisor.agent.kube import leases  # noqa: E402
from kubevisor.agent.vms import realizing  # noqa: E402
from kubevisor.api import nodes  # noqa: E402

NODE = "node-t"
URI = "test:///default"


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with the node bridge kvbr0 (the agent's netlink target)."""
    with testing.node_netns("kvt-agent") as name:
        yield name


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[client.ApiClient]:
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as c:
        yield c


async def _poll(what: str, check: Callable[[], Any], *, limit: float = 60) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _status_writes(
    custom: client.CustomObjectsApi, name: str, *, since: dict[str, Any], until: dict[str, Any]
) -> int:
    """How many writes changed the VM's status after the object ``since`` up to the object
    ``until``: the API server's own history (a watch from ``since``'s resourceVersion)."""
    from kubernetes_asyncio import watch

    writes, previous = 0, since.get("status")
    stream = watch.Watch()
    async for event in stream.stream(
        custom.list_namespaced_custom_object, "kubevisor.io", "v1alpha1", "default",
        "virtualmachines", field_selector=f"metadata.name={name}",
        resource_version=since["metadata"]["resourceVersion"],
        timeout_seconds=10,
    ):  # fmt: skip
        obj = event["object"]
        status = obj.get("status")
        if status != previous:
            writes += 1
        previous = status
        if obj["metadata"]["resourceVersion"] == until["metadata"]["resourceVersion"]:
            stream.stop()
            break
    return writes


async def test_vm_lifecycle_with_test_driver(
    api: client.ApiClient, netns: str, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(api)
    name = f"vm-{uuid.uuid4().hex[:6]}"
    ns = "default"
    g, v, plural = "kubevisor.io", "v1alpha1", "virtualmachines"

    async def get() -> dict[str, Any]:
        return dict(await custom.get_namespaced_custom_object(g, v, ns, plural, name))

    async def controller_applies(**fields: Any) -> None:
        body = {
            "apiVersion": f"{g}/{v}",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns},
            "status": {"nodeName": NODE, **fields},
        }
        await custom.patch_namespaced_custom_object_status(
            g, v, ns, plural, name, body, field_manager="kubevisor-controller",
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    machine = {
        "cpu": {"cores": 1},
        "memory": "128Mi",
        "disks": [{"name": "root", "size": "16Mi"}],
        "nics": [
            {"name": "eth0", "network": "default", "mac": "52:54:00:00:aa:01"},
            {"name": "eth1", "network": "default", "vlan": 100},
        ],
        "boot": {"kernel": "/nonexistent/vmlinuz"},
    }
    await custom.create_namespaced_custom_object(
        g, v, ns, plural,
        {
            "apiVersion": f"{g}/{v}", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": {"kubevisor.io/node": NODE}},
            "spec": {"memory": "128Mi", "disks": [{"name": "root", "size": "16Mi"}]},
        },
    )  # fmt: skip
    await controller_applies(machine=machine, desiredState="Running")
    applied = await get()

    holder = libvirt_adapter.Hypervisor(URI)  # plays libvirtd outliving agent restarts
    await holder.connect(events=False)
    layout = disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    cfg = realizing.AgentConfig(
        node=NODE, layout=layout, networks={"default": "kvbr0"},
        facts=domainxml.HostFacts(), stop_timeout=5.0, tick=2.0,
    )  # fmt: skip

    async def start_agent() -> tuple[realizing.Agent, asyncio.Task[None], Any]:
        hv = libvirt_adapter.Hypervisor(URI)
        await hv.connect()
        heartbeat = leases.Heartbeat(
            api, node=NODE, labels={"zone": "a"},
            capacity=nodes.Capacity(cpu=2, memory_bytes=1 << 30), interval=1.0,
        )  # fmt: skip
        agent = realizing.Agent(
            api, hv, cfg, segments=netsegments.Segments(netns=netns), heartbeat=heartbeat
        )
        return agent, asyncio.create_task(agent.run()), hv

    agent, task, hv = await start_agent()
    try:
        vm = await _poll("Running", lambda: _phase_is(get, "Running"))
        st = vm["status"]
        assert st["nodeName"] == NODE and st["desiredState"] == "Running"  # controller's kept
        assert {i["name"]: i.get("mac") for i in st["interfaces"]}["eth0"] == "52:54:00:00:aa:01"
        assert st["domainUUID"] and st["runningAt"]
        assert "kubevisor.io/agent-cleanup" in vm["metadata"]["finalizers"]
        # apply -> Running in one status write, counted by the API server, not the agent
        assert await _status_writes(custom, name, since=applied, until=vm) == 1
        disk = layout.state_dir / "disks" / ns / name / "root.qcow2"
        assert disk.exists()

        lease = await _poll("lease segments", lambda: _lease_with_vlan(api))
        assert lease.metadata.labels == {"zone": "a", "kubevisor.io/agent": "true"}

        # Agent restart: adopts the running domain without restarting it, writes nothing.
        uuid_before = st["domainUUID"]
        rv_before = (await get())["metadata"]["resourceVersion"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hv.close()
        agent, task, hv = await start_agent()
        await _poll("re-listed", lambda: _passes(agent))
        info = await holder.lookup(f"{ns}_{name}")
        assert info is not None and info.uuid == uuid_before
        assert info.state is libvirt_adapter.DomainState.RUNNING
        assert (await get())["metadata"]["resourceVersion"] == rv_before  # no write at all

        # Stop: graceful (the test driver powers off at once), phase Stopped, VLAN pruned.
        await controller_applies(machine=machine, desiredState="Stopped")
        await _poll("Stopped", lambda: _phase_is(get, "Stopped"))
        await _poll("vlan pruned", lambda: _lease_segments(api, "[]"))

        # Restart token while stopped-then-running: start, token recorded.
        await controller_applies(machine=machine, desiredState="Running", restartToken="t1")
        vm = await _poll("restart applied", lambda: _applied(get, "t1"))
        assert vm["status"]["phase"] == "Running"

        # Delete: domain and own disk go, then our finalizer; the object disappears.
        await custom.delete_namespaced_custom_object(g, v, ns, plural, name)
        await _poll("VM gone", lambda: _gone(get))
        assert await holder.lookup(f"{ns}_{name}") is None
        assert not disk.exists()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hv.close()
        leftover = await holder.lookup(f"{ns}_{name}")
        if leftover is not None:
            await holder.destroy(leftover.name)
            await holder.undefine(leftover.name)
        await holder.close()


async def _phase_is(get: Callable[[], Any], phase: str) -> dict[str, Any] | None:
    vm = await get()
    return vm if (vm.get("status") or {}).get("phase") == phase else None


async def _applied(get: Callable[[], Any], token: str) -> dict[str, Any] | None:
    vm = await get()
    return vm if (vm.get("status") or {}).get("appliedRestartToken") == token else None


async def _gone(get: Callable[[], Any]) -> bool:
    try:
        await get()
    except client.exceptions.ApiException as exc:
        return exc.status == 404
    return False


async def _passes(agent: realizing.Agent) -> bool:
    return agent.watcher.synced.is_set() and agent.passes > 0 and agent.loop.queue.empty()


async def _lease(api: client.ApiClient) -> Any:
    return await client.CoordinationV1Api(api).read_namespaced_lease(NODE, nodes.LEASE_NAMESPACE)


async def _lease_with_vlan(api: client.ApiClient) -> Any:
    lease = await _lease(api)
    segs = (lease.metadata.annotations or {}).get(nodes.ANNOTATION_SEGMENTS)
    return lease if segs == '["default","vlan-100"]' else None


async def _lease_segments(api: client.ApiClient, value: str) -> bool:
    lease = await _lease(api)
    return bool((lease.metadata.annotations or {}).get(nodes.ANNOTATION_SEGMENTS) == value)
