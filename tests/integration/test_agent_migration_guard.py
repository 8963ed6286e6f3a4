"""The two-copies guard against a real kube-apiserver and libvirt's test driver.

The controller is played by the test (``controller_played_by_test``): it places the VM on
the node and writes ``status.migration`` with the migration reconciler's field manager.
While that record says the VM is leaving this node, the agent neither defines nor starts
its missing domain and writes no phase; once the migration failed it starts it again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from kubevisor.agent.vms import realizing  # noqa: E402
from kubevisor.api import migrations  # noqa: E402

NODE = "node-g"
URI = "test:///default"
G, V, PLURAL, NS = "kubevisor.io", "v1alpha1", "virtualmachines", "default"


@pytest.fixture
def netns() -> Iterator[str]:
    with testing.node_netns("kvt-guard") as name:
        yield name


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[client.ApiClient]:
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as c:
        yield c


async def test_leaving_vm_is_not_started_here(
    api: client.ApiClient, netns: str, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(api)
    name = f"vm-{uuid.uuid4().hex[:6]}"

    async def get() -> dict[str, Any]:
        return dict(await custom.get_namespaced_custom_object(G, V, NS, PLURAL, name))

    async def controller_played_by_test(manager: str, **fields: Any) -> None:
        body = {
            "apiVersion": f"{G}/{V}",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "status": fields,
        }
        await custom.patch_namespaced_custom_object_status(
            G, V, NS, PLURAL, name, body, field_manager=manager,
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    machine = {
        "cpu": {"cores": 1},
        "memory": "128Mi",
        "disks": [{"name": "root", "size": "16Mi"}],
        "nics": [{"name": "eth0", "network": "default"}],
        "boot": {"kernel": "/nonexistent/vmlinuz"},
    }
    await custom.create_namespaced_custom_object(
        G, V, NS, PLURAL,
        {
            "apiVersion": f"{G}/{V}", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": {"kubevisor.io/node": NODE}},
            "spec": {"memory": "128Mi", "disks": [{"name": "root", "size": "16Mi"}]},
        },
    )  # fmt: skip
    record = {"name": "mig-1", "sourceNode": NODE, "targetNode": "node-other"}
    await controller_played_by_test(
        migrations.CONTROLLER_FIELD_MANAGER, migration={**record, "phase": "Running"}
    )
    await controller_played_by_test(
        "kubevisor-controller", nodeName=NODE, machine=machine, desiredState="Running"
    )

    hv = libvirt_adapter.Hypervisor(URI)
    await hv.connect()
    layout = disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    cfg = realizing.AgentConfig(
        node=NODE, layout=layout, networks={"default": "kvbr0"},
        facts=domainxml.HostFacts(), tick=1.0,
    )  # fmt: skip
    agent = realizing.Agent(api, hv, cfg, segments=netsegments.Segments(netns=netns))
    task = asyncio.create_task(agent.run())
    try:
        # Several passes (tick every second) without a domain or a phase.
        async def passes() -> bool:
            return agent.passes >= 3

        await _poll("three passes", passes)
        assert await hv.lookup(f"{NS}_{name}") is None
        assert "phase" not in ((await get()).get("status") or {})

        # The migration failed: the VM stays here, so the agent starts it again.
        await controller_played_by_test(
            migrations.CONTROLLER_FIELD_MANAGER, migration={**record, "phase": "Failed"}
        )

        async def running() -> bool:
            return ((await get()).get("status") or {}).get("phase") == "Running"

        await _poll("Running after the failed migration", running)
        info = await hv.lookup(f"{NS}_{name}")
        assert info is not None and info.state is libvirt_adapter.DomainState.RUNNING
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        leftover = await hv.lookup(f"{NS}_{name}")
        if leftover is not None:
            await hv.destroy(leftover.name)
            await hv.undefine(leftover.name)
        await hv.close()


async def _poll(what: str, check: Callable[[], Awaitable[bool]], *, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
