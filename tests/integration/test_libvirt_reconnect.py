"""The agent's libvirt adapter outlives its libvirtd: a real libvirtd of a simulated node
is stopped and started again under one open ``Hypervisor`` (docs/rebalancing.md, the
power switch; an upgraded or crashed libvirtd is the same).

No guest is booted (a defined, shut-off domain is enough to see the new libvirtd's view
being read again); the VM status side with a running TCG guest and a real agent is
tests/e2e/test_hypervisor_reconnect.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kubevisor.devenv import nodepower, nodes, testing

pytestmark = pytest.mark.integration

testing.require_module("libvirt")

from kubevisor.agent import libvirt as libvirt_adapter  # noqa: E402

CLUSTER = "kvhvadp"


@pytest.fixture(scope="module")
def node() -> Iterator[nodes.SimNode]:
    testing.require_root("simulated nodes (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "virtlogd", "virsh", "nsenter")
    try:
        (created,) = nodes.create_cluster_nodes(CLUSTER, 1)
        yield created
    finally:
        nodes.destroy_cluster_nodes(CLUSTER)


@pytest.fixture
async def hv(node: nodes.SimNode) -> AsyncIterator[libvirt_adapter.Hypervisor]:
    async with libvirt_adapter.Hypervisor(
        node.libvirt_uri, reconnect_first=0.2, reconnect_cap=1.0
    ) as hypervisor:
        yield hypervisor
    await asyncio.to_thread(nodepower.start_libvirtd, node)


def _domain_xml(name: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{Path("/nonexistent")}</kernel></os>
</domain>"""


async def _until(what: str, check: Callable[[], object]) -> None:
    await testing.wait_for_async(check, timeout=60, what=what)


async def test_a_restarted_libvirtd_is_reconnected_and_read_again(
    node: nodes.SimNode, hv: libvirt_adapter.Hypervisor
) -> None:
    name = f"reconnect-{uuid.uuid4().hex[:6]}"
    info = await hv.define(_domain_xml(name))
    lost: list[bool] = []
    back: list[bool] = []
    hv.on_lost(lambda: lost.append(True))
    hv.on_reconnect(lambda: back.append(True))
    try:
        await asyncio.to_thread(nodepower.stop_libvirtd, node)
        await _until("the adapter to notice libvirtd is gone", lambda: lost)
        assert not hv.available
        with pytest.raises(libvirt_adapter.HypervisorUnavailable) as raised:
            await hv.lookup(name)
        assert node.libvirt_uri in str(raised.value)
        assert hv.reconnects == 0

        await asyncio.to_thread(nodepower.start_libvirtd, node)
        await _until("the adapter to reconnect", lambda: back)
        assert hv.available and hv.reconnects == 1
        again = await hv.lookup(name)  # the new libvirtd's view of the persistent domain
        assert again is not None and again.uuid == info.uuid
        assert await hv.hostname()

        # and once more: a second loss is noticed and healed the same way
        await asyncio.to_thread(nodepower.stop_libvirtd, node)
        await _until("the second loss", lambda: len(lost) == 2)
        await asyncio.to_thread(nodepower.start_libvirtd, node)
        await _until("the second reconnect", lambda: len(back) == 2)
        assert (await hv.lookup(name)) is not None
    finally:
        await asyncio.to_thread(nodepower.start_libvirtd, node)
        await _until("connected for cleanup", lambda: hv.available)
        await hv.undefine(name)
