"""The agent's libvirt adapter against libvirt's ``test:///default`` driver.

Why the test driver: it is a real libvirt driver (real XML parsing, state machine,
events) with a fake hypervisor, so define/start/stop/undefine and adoption run in
milliseconds without QEMU. What only QEMU shows (boot) is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

testing.require_module("libvirt")

from kubevisor.agent import domainxml  # noqa: E402
from kubevisor.agent import libvirt as libvirt_adapter  # noqa: E402
from kubevisor.api import machines  # noqa: E402

URI = "test:///default"


def _xml(identity: domainxml.Identity) -> str:
    machine = machines.MachineSpec.model_validate(
        {
            "cpu": {"cores": 1},
            "memory": "256Mi",
            "disks": [{"name": "root"}],
            "nics": [{"name": "eth0", "network": "default"}],
            "boot": {"kernel": "/k"},
        }
    )
    placement = domainxml.Placement(
        disks=(domainxml.DiskPlacement("root", Path("/nonexistent/root.qcow2")),),
        nics=(domainxml.NICPlacement("eth0", "52:54:00:00:00:01", "kvbr0", "kvt0n0"),),
        console_log=Path("/nonexistent/console.log"),
    )
    return domainxml.render(machine, identity, placement, domainxml.HostFacts())


@pytest.fixture
def identity() -> domainxml.Identity:
    return domainxml.Identity(
        namespace="ns", name=f"vm-{uuid.uuid4().hex[:6]}", uid=str(uuid.uuid4())
    )


@pytest.fixture
async def hv() -> AsyncIterator[libvirt_adapter.Hypervisor]:
    async with libvirt_adapter.Hypervisor(URI) as hypervisor:
        yield hypervisor


async def test_define_start_pause_stop_undefine(
    hv: libvirt_adapter.Hypervisor, identity: domainxml.Identity
) -> None:
    S = libvirt_adapter.DomainState
    info = await hv.define(_xml(identity))
    assert info.name == identity.domain_name
    assert info.identity == identity
    assert info.state is S.SHUTOFF and info.persistent

    await hv.start(info.name)
    assert await hv.state(info.name) is S.RUNNING
    await hv.suspend(info.name)
    assert await hv.state(info.name) is S.PAUSED
    await hv.resume(info.name)
    assert await hv.state(info.name) is S.RUNNING

    await hv.shutdown(info.name)
    after = await hv.lookup(info.name)
    assert after is not None and after.state is S.SHUTOFF
    assert after.guest_shut_down and not after.failed

    await hv.start(info.name)
    await hv.destroy(info.name)
    await hv.destroy(info.name)  # already off: not an error
    assert await hv.state(info.name) is S.SHUTOFF

    await hv.undefine(info.name)
    await hv.undefine(info.name)  # already gone: not an error
    assert await hv.lookup(info.name) is None
    with pytest.raises(libvirt_adapter.NoSuchDomain):
        await hv.start(info.name)


async def test_adoption_by_a_new_connection_keeps_domain_running(
    identity: domainxml.Identity,
) -> None:
    """A restarted agent (new connection) finds our running domain by its metadata.

    ``holder`` stands in for libvirtd, which outlives the agent: the test driver frees its
    state when the last connection of the process closes.
    """
    holder = libvirt_adapter.Hypervisor(URI)
    await holder.connect(events=False)
    async with libvirt_adapter.Hypervisor(URI) as first:
        info = await first.define(_xml(identity))
        await first.start(info.name)
    async with libvirt_adapter.Hypervisor(URI) as second:
        ours = [d for d in await second.list() if d.identity == identity]
        assert [d.uuid for d in ours] == [info.uuid]
        assert ours[0].state is libvirt_adapter.DomainState.RUNNING
        foreign = [d for d in await second.list() if d.identity is None]
        assert "test" in {d.name for d in foreign}  # the driver's own domain is not ours
        facts = domainxml.live_facts(ours[0].xml)
        assert facts.macs == {"eth0": "52:54:00:00:00:01"}
        await second.destroy(info.name)
        await second.undefine(info.name)
    await holder.close()


async def test_lifecycle_events_arrive(
    hv: libvirt_adapter.Hypervisor, identity: domainxml.Identity
) -> None:
    info = await hv.define(_xml(identity))
    await hv.start(info.name)

    async def wait_for_started() -> libvirt_adapter.DomainEvent:
        while True:
            event = await hv.next_event()
            if event.name == info.name and event.event == 2:  # VIR_DOMAIN_EVENT_STARTED
                return event

    event = await asyncio.wait_for(wait_for_started(), timeout=30)
    assert event.uuid == info.uuid
    await hv.destroy(info.name)
    await hv.undefine(info.name)
