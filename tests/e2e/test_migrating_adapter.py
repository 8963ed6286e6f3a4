"""The agent's migration adapter moves a real TCG guest between two simulated nodes.

Why: ``agent/libvirt/migrating`` is what the source agent will call for a Migration; this
shows it on real libvirtds and QEMU before any controller wiring: the policy's flags work,
progress is sampled while memory moves, the guest ends up running on the target only, and
it never rebooted (its console tick counter continues, the boot marker appears once).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from kubevisor.api import migrations
from kubevisor.devenv import guest, nodes, testing
from kubevisor.devenv.testing import wait_for

testing.require_module("libvirt")

from kubevisor.agent.libvirt import hypervisor, migrating  # noqa: E402

pytestmark = pytest.mark.e2e

BOOT_DEADLINE_S = 240.0
#: The guest prints "kv-tick N" five times a second from its console script.
TICKS = 'i=0; while true; do i=$((i+1)); echo "kv-tick $i"; sleep 0.2; done\n'
TICK = re.compile(r"^kv-tick (\d+)\r?$", re.MULTILINE)


@pytest.fixture
def two_nodes() -> Iterator[list[nodes.SimNode]]:
    """Two fresh simulated nodes; destroyed even when the test fails."""
    testing.require_root("simulated nodes (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "nsenter")
    cluster = f"mig{os.getpid() % 100000}"
    created = nodes.create_cluster_nodes(cluster, 2)
    try:
        yield created
    finally:
        nodes.destroy_cluster_nodes(cluster)


async def test_adapter_migrates_a_running_guest_without_reboot(
    two_nodes: list[nodes.SimNode],
) -> None:
    image = guest.ensure_tiny_image()
    node1, node2 = two_nodes
    disk = node1.shared_dir / "vm1.qcow2"
    console = node1.shared_dir / "vm1.console.log"
    guest.create_linked_disk(disk, base=image.base_disk)
    xml = guest.tiny_domain_xml(
        "vm1",
        image=image,
        disk=disk,
        console_log=console,
        cmdline=guest.kernel_cmdline(script=TICKS),
    )

    def ticks() -> list[int]:
        text = console.read_text(errors="replace") if console.exists() else ""
        return [int(n) for n in TICK.findall(text)]

    async with (
        hypervisor.Hypervisor(node1.libvirt_uri) as source,
        hypervisor.Hypervisor(node2.libvirt_uri) as target,
    ):
        await source.define(xml)
        await source.start("vm1")
        wait_for(lambda: len(ticks()) >= 10, timeout=BOOT_DEADLINE_S, what="10 console ticks")
        before = ticks()[-1]

        request = migrating.build(
            migrations.MigrationPolicy(max_downtime_ms=300), shared_storage=True
        )
        samples: list[migrations.MigrationProgress] = []

        async def record(sample: migrations.MigrationProgress) -> None:
            samples.append(sample)

        try:
            await migrating.migrate_with_progress(
                source,
                "vm1",
                dest_uri=node2.tcp_uri,
                request=request,
                on_progress=record,
                interval_s=0.1,
            )
        except migrating.MigrationError:
            _print_daemon_logs(two_nodes)  # a rare "client socket is closed" under load
            raise

        assert await source.lookup("vm1") is None, "the source still holds a copy"
        moved = await target.lookup("vm1")
        assert moved is not None and moved.state is hypervisor.DomainState.RUNNING
        assert moved.persistent
        final = migrating.outcome(
            await migrating.job_stats(target, "vm1", completed=True), switched_to_post_copy=False
        )
        print(f"{len(samples)} progress samples; last: {samples[-1] if samples else None}")
        print(f"outcome: {final}")
        assert samples, "no progress sample while the migration ran"
        assert any(s.data_total_bytes for s in samples), "samples carried no byte counts"
        assert final.mode is migrations.MigrationMode.PRE_COPY
        assert final.bytes_transferred and final.bytes_transferred > 0

        wait_for(
            lambda: ticks()[-1] > before + 10, timeout=60, what="ticks continuing on the target"
        )
        after = ticks()
        assert after == list(range(after[0], after[0] + len(after))), "tick counter restarted"
        text = console.read_text(errors="replace")
        assert text.count(guest.BOOTED_MARKER) == 1, "the guest booted again"
        assert await source.lookup("vm1") is None
        assert (await target.state("vm1")) is hypervisor.DomainState.RUNNING


def _print_daemon_logs(sim_nodes: list[nodes.SimNode]) -> None:
    """Whether each node's libvirtd still runs, and the end of its log (the nodes, and
    their logs, are destroyed when the test ends)."""
    for node in sim_nodes:
        alive = os.path.exists(f"/proc/{node.libvirtd_pid}")
        print(f"--- {node.name}: libvirtd pid {node.libvirtd_pid} alive={alive} ---")
        log = node.state_dir / "log/libvirt/libvirtd.log"
        if log.exists():
            print(log.read_text(errors="replace")[-3000:])
