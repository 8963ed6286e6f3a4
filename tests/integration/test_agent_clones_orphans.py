"""Agent clone copies and the orphan sweep, with libvirt's test driver, real qemu-img
files and a real kube-apiserver.

The test driver runs no guest, but it keeps domain state and emits the same lifecycle
events as QEMU, so the order "suspend source, copy, resume source" is observable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
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
from kubevisor.agent.vms import handling, realizing  # noqa: E402
from kubevisor.api import machines  # noqa: E402

URI = "test:///default"
NS = "default"
# libvirt's VIR_DOMAIN_EVENT_* codes (the adapter hands them through as ints).
SUSPENDED, RESUMED = 3, 4


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[client.ApiClient]:
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as c:
        yield c


@pytest.fixture
async def hv() -> AsyncIterator[Any]:
    h = libvirt_adapter.Hypervisor(URI)
    await h.connect(events=True)
    try:
        yield h
    finally:
        await h.close()


def _layout(tmp_path: Path) -> disks.Layout:
    (tmp_path / "images").mkdir(exist_ok=True)
    return disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images",
                        shared_dir=tmp_path / "nas")  # fmt: skip


def _agent(api: client.ApiClient, hv: Any, layout: disks.Layout) -> realizing.Agent:
    cfg = realizing.AgentConfig(node="node-c", layout=layout, networks={"default": "kvbr0"},
                                facts=domainxml.HostFacts())  # fmt: skip
    return realizing.Agent(api, hv, cfg, segments=netsegments.Segments())


MACHINE = machines.MachineSpec.model_validate(
    {"cpu": {"cores": 1}, "memory": "64Mi", "boot": {"kernel": "/nonexistent/vmlinuz"}}
)


async def _define(hv: Any, identity: domainxml.Identity, *, state: str) -> None:
    xml = domainxml.render(MACHINE, identity, domainxml.Placement(), domainxml.HostFacts())
    await hv.define(xml)
    if state in ("running", "paused"):
        await hv.start(identity.domain_name)
    if state == "paused":
        await hv.suspend(identity.domain_name)


async def _remove(hv: Any, name: str) -> None:
    if await hv.lookup(name) is not None:
        await hv.destroy(name)
        await hv.undefine(name)


def _qemu_io(command: str, path: Path) -> None:
    subprocess.run(["qemu-io", "-c", command, str(path)], capture_output=True, check=True)


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


async def _events_of(hv: Any, name: str) -> list[int]:
    """Lifecycle events queued so far for domain ``name`` (drains the queue)."""
    seen = []
    while True:
        try:
            event = await asyncio.wait_for(hv.next_event(), timeout=0.5)
        except TimeoutError:
            return seen
        if event.name == name:
            seen.append(event.event)


@pytest.mark.parametrize("source_state", ["running", "paused", "shutoff"])
async def test_clone_copy_suspends_a_running_source_around_it_and_leaves_it_as_it_was(
    api: client.ApiClient, hv: Any, tmp_path: Path, source_state: str
) -> None:
    """What the test driver can show: the running source is suspended before the copy and
    resumed after it, a paused or stopped one is left alone, the copy is flat with the
    source's content. Whether the copy is a point in time of a guest that writes cannot
    be seen here (the test driver runs no guest); that needs a real QEMU guest."""
    testing.require_tools("qemu-img")
    layout = _layout(tmp_path)
    base = layout.image_dir / "base.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(base), "8M")
    suffix = uuid.uuid4().hex[:6]
    source = domainxml.Identity(namespace=NS, name=f"src-{suffix}", uid=str(uuid.uuid4()))
    clone = domainxml.Identity(namespace=NS, name=f"copy-{suffix}", uid=str(uuid.uuid4()))
    # The source's disk: a linked overlay with data of its own.
    src_disk = layout.root("shared") / NS / source.name / "root.qcow2"
    src_disk.parent.mkdir(parents=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(src_disk))
    _qemu_io("write -P 0x5a 0 64k", src_disk)
    before = src_disk.read_bytes()
    await _define(hv, source, state=source_state)
    try:
        await _events_of(hv, source.domain_name)  # drop the set-up events
        machine = MACHINE.model_copy(
            update={
                "disks": [
                    machines.Disk(
                        name="root",
                        image=f"vm:{NS}/{source.name}/root",
                        clone="full",
                        storage="shared",
                    )
                ]
            }
        )
        agent = _agent(api, hv, layout)
        plans = disks.plan(machine, clone, layout)
        scope = handling.Scope(key=(NS, clone.name), obj={}, identity=clone, machine=machine,
                                status={}, domain=None)  # fmt: skip
        await agent.clones.copy(scope.key, plans)

        events = await _events_of(hv, source.domain_name)
        if source_state == "running":
            assert events == [SUSPENDED, RESUMED]  # copied while suspended
        else:
            assert events == []  # a paused or stopped source is copied as it is
        expected_state = {"running": "running", "paused": "paused", "shutoff": "shutoff"}
        assert await hv.state(source.domain_name) == expected_state[source_state]
        assert agent.clones.holding == set()

        copy = plans[0].path
        assert copy == layout.root("shared") / NS / clone.name / "root.qcow2"
        info = json.loads(_qemu_img("info", "--output=json", str(copy)))
        assert "backing-filename" not in info  # flattened: independent of source and base
        assert info["format"] == "qcow2"
        _qemu_img("compare", str(src_disk), str(copy))  # same guest-visible content
        assert src_disk.read_bytes() == before  # the source file was only read
        assert disks.deletable(plans, layout) == [copy]
    finally:
        await _remove(hv, source.domain_name)


async def test_orphan_sweep_undefines_only_our_domains_of_vanished_vms_and_keeps_disks(
    api: client.ApiClient, hv: Any, tmp_path: Path
) -> None:
    layout = _layout(tmp_path)
    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    # A VM that exists (placed on another node, so not in this agent's cache).
    live = await custom.create_namespaced_custom_object(
        "kubevisor.io", "v1alpha1", NS, "virtualmachines",
        {"apiVersion": "kubevisor.io/v1alpha1", "kind": "VirtualMachine",
         "metadata": {"name": f"live-{suffix}"}, "spec": {"templateRef": {"name": "none"}}},
    )  # fmt: skip
    kept = domainxml.Identity(namespace=NS, name=f"live-{suffix}", uid=live["metadata"]["uid"])
    gone = domainxml.Identity(namespace=NS, name=f"gone-{suffix}", uid=str(uuid.uuid4()))
    # Same name as the live VM's would be, but another uid: an older, deleted VM.
    stale = domainxml.Identity(namespace="other", name=f"live-{suffix}", uid=str(uuid.uuid4()))
    foreign = f"foreign-{suffix}"
    orphan_disk = layout.root("shared") / NS / gone.name / "root.qcow2"
    orphan_disk.parent.mkdir(parents=True)
    orphan_disk.write_bytes(b"guest data")
    await _define(hv, kept, state="running")
    await _define(hv, gone, state="running")
    await _define(hv, stale, state="shutoff")
    await hv.define(
        f"<domain type='test'><name>{foreign}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        agent = _agent(api, hv, layout)
        removed = await agent.sweep_orphans()
        assert sorted(removed) == sorted([gone.domain_name, stale.domain_name])
        assert await hv.lookup(gone.domain_name) is None
        assert await hv.lookup(stale.domain_name) is None
        assert await hv.lookup(kept.domain_name) is not None
        assert await hv.lookup(foreign) is not None  # not ours (no kubevisor metadata)
        assert orphan_disk.read_bytes() == b"guest data"  # disks are never swept
        assert await agent.sweep_orphans() == []  # idempotent
    finally:
        for name in (kept.domain_name, gone.domain_name, stale.domain_name, foreign):
            await _remove(hv, name)
        await custom.delete_namespaced_custom_object(
            "kubevisor.io", "v1alpha1", NS, "virtualmachines", f"live-{suffix}"
        )


async def test_returning_node_removes_stale_copies_of_vms_placed_elsewhere_keeping_disks(
    api: client.ApiClient, hv: Any, tmp_path: Path
) -> None:
    """A node that comes back after a node loss (docs/node-loss.md): the domain of a VM
    now placed on another node is a stale copy (destroyed, undefined, disks kept); a VM
    migrating here and a VM placed nowhere yet are left alone."""
    layout = _layout(tmp_path)
    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    made: list[str] = []

    async def vm(name: str, labels: dict[str, str]) -> domainxml.Identity:
        obj = await custom.create_namespaced_custom_object(
            "kubevisor.io", "v1alpha1", NS, "virtualmachines",
            {"apiVersion": "kubevisor.io/v1alpha1", "kind": "VirtualMachine",
             "metadata": {"name": f"{name}-{suffix}", "labels": labels},
             "spec": {"templateRef": {"name": "none"}}},
        )  # fmt: skip
        made.append(obj["metadata"]["name"])
        return domainxml.Identity(namespace=NS, name=obj["metadata"]["name"],
                                  uid=obj["metadata"]["uid"])  # fmt: skip

    moved = await vm("moved", {"kubevisor.io/node": "node-b"})
    incoming = await vm(
        "incoming", {"kubevisor.io/node": "node-b", "kubevisor.io/migration-target": "node-c"}
    )
    unplaced = await vm("unplaced", {})
    shared_disk = layout.root("shared") / NS / moved.name / "root.qcow2"
    shared_disk.parent.mkdir(parents=True)
    shared_disk.write_bytes(b"guest data")
    await _define(hv, moved, state="running")
    await _define(hv, incoming, state="paused")
    await _define(hv, unplaced, state="shutoff")
    try:
        agent = _agent(api, hv, layout)  # this node is node-c
        assert await agent.sweep_orphans() == [moved.domain_name]
        assert await hv.lookup(moved.domain_name) is None
        assert await hv.lookup(incoming.domain_name) is not None
        assert await hv.lookup(unplaced.domain_name) is not None
        assert shared_disk.read_bytes() == b"guest data"  # the disk the VM now runs from
        # one VM at a time, as when a VM leaves this node's label selector
        await _define(hv, moved, state="running")
        assert await agent.orphans.sweep_one((NS, moved.name)) is True
        assert await hv.lookup(moved.domain_name) is None
        assert await agent.orphans.sweep_one((NS, incoming.name)) is False
    finally:
        for ident in (moved, incoming, unplaced):
            await _remove(hv, ident.domain_name)
        for name in made:
            await custom.delete_namespaced_custom_object(
                "kubevisor.io", "v1alpha1", NS, "virtualmachines", name
            )


async def test_a_restarted_agent_removes_a_stale_copy_before_its_work_loop_runs(
    api: client.ApiClient, hv: Any, tmp_path: Path
) -> None:
    """``Agent.run`` as a restarted agent runs it (a node back after a node loss, or a
    migration's source restarted after the VM moved): the stale copy of a VM now placed
    on another node is gone before the first pass of the work loop over a VM placed here.
    The work loop's first pass is recorded with whether the stale domain still existed."""
    layout = _layout(tmp_path)
    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    made: list[str] = []
    for name, node in (("left", "node-b"), ("here", "node-c")):
        obj = await custom.create_namespaced_custom_object(
            "kubevisor.io", "v1alpha1", NS, "virtualmachines",
            {"apiVersion": "kubevisor.io/v1alpha1", "kind": "VirtualMachine",
             "metadata": {"name": f"{name}-{suffix}", "labels": {"kubevisor.io/node": node}},
             "spec": {"templateRef": {"name": "none"}}},
        )  # fmt: skip
        made.append(obj["metadata"]["name"])
        if name == "left":
            left = domainxml.Identity(namespace=NS, name=obj["metadata"]["name"],
                                      uid=obj["metadata"]["uid"])  # fmt: skip
    await _define(hv, left, state="running")
    agent = _agent(api, hv, layout)  # this node is node-c
    first_pass: list[bool] = []
    original = agent.loop.handler

    async def recording(key: tuple[str, str]) -> None:
        if not first_pass:
            first_pass.append(await hv.lookup(left.domain_name) is not None)
        await original(key)

    agent.loop.handler = recording
    task = asyncio.get_running_loop().create_task(agent.run())
    try:
        await testing.wait_for_async(lambda: first_pass, timeout=60, what="a first pass")
        assert first_pass == [False], "the work loop ran while the stale copy existed"
        assert await hv.lookup(left.domain_name) is None
        assert left.domain_name in agent.orphans_removed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _remove(hv, left.domain_name)
        for name in made:
            await custom.delete_namespaced_custom_object(
                "kubevisor.io", "v1alpha1", NS, "virtualmachines", name
            )
