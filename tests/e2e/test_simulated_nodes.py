"""Two simulated nodes run a real TCG guest and live-migrate it peer-to-peer.

Why: this is the floor every e2e test stands on — if simulated nodes cannot boot a guest
and move it between their libvirtds with its MAC intact, no Migration test means anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubevisor.devenv import guest, nodes, testing

GUEST_MAC = "52:54:00:4b:56:01"
GUEST_IP = "10.77.0.100"
BOOT_DEADLINE_S = 240.0


def _poll(what: str, condition: Callable[[], bool], *, timeout: float) -> None:
    """Wait for ``condition`` with a deadline; fail the test with ``what`` when it passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _require_host() -> None:
    testing.require_root("simulated nodes (namespaces, mounts, libvirtd)")
    testing.require_tools(
        "libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img", "nsenter"
    )


def _live_processes_mentioning(text: str) -> list[str]:
    """Command lines of non-zombie processes that contain ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z" and text in cmdline:
            found.append(f"{entry}: {cmdline[:120]}")
    return found


def _running(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (pid 1 here may reap lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cluster_netns(cluster: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(f"kv-{cluster}-")]
    except FileNotFoundError:
        return []


def _ping_command() -> list[str]:
    """``ping``, or busybox's (always there: the guest build installs busybox-static)."""
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    testing.absent("no ping and no busybox on this host")


def _ping_from_fabric(cluster: str, address: str) -> bool:
    netns = nodes.fabric_netns_name(cluster)
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *_ping_command(), "-c", "1", "-W", "1", address],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@pytest.fixture(scope="module")
def tiny_image() -> guest.TinyImage:
    _require_host()
    return guest.ensure_tiny_image()


@pytest.fixture
def sim_nodes() -> Iterator[list[nodes.SimNode]]:
    """Two fresh simulated nodes; always destroyed, even when the test fails."""
    _require_host()
    cluster = f"e2e{os.getpid() % 100000}"
    created = nodes.create_cluster_nodes(cluster, 2)
    try:
        yield created
    finally:
        # Printed always, shown by pytest only when the test fails: the nodes' libvirt logs
        # are gone once the nodes are destroyed.
        for node in created:
            for log in sorted((node.state_dir / "log" / "libvirt").rglob("*.log")):
                print(f"==== {node.name}: {log.name} (tail)")
                print(log.read_text(errors="replace")[-3000:])
        nodes.destroy_cluster_nodes(cluster)


@pytest.mark.e2e
def test_guest_boots_and_live_migrates_between_nodes(
    tiny_image: guest.TinyImage, sim_nodes: list[nodes.SimNode]
) -> None:
    testing.require_module("libvirt")
    import libvirt

    node1, node2 = sim_nodes
    cluster = node1.cluster

    conn1 = libvirt.open(node1.libvirt_uri)
    conn2 = libvirt.open(node2.libvirt_uri)
    try:
        uuids = []
        for node, conn in ((node1, conn1), (node2, conn2)):
            match = re.search(r"<host>\s*<uuid>([0-9a-f-]+)</uuid>", conn.getCapabilities())
            assert match, "capabilities carry no host uuid"
            print(f"{node.name} host_uuid={match.group(1)} libvirtd_pid={node.libvirtd_pid}")
            assert match.group(1) == node.host_uuid
            uuids.append(match.group(1))
        assert uuids[0] != uuids[1]

        disk = node1.shared_dir / "vm1.qcow2"
        console = node1.shared_dir / "vm1.console.log"
        guest.create_linked_disk(disk, base=tiny_image.base_disk)
        xml = guest.tiny_domain_xml(
            "vm1",
            image=tiny_image,
            disk=disk,
            console_log=console,
            mac=GUEST_MAC,
            cmdline=guest.kernel_cmdline(ip=f"{GUEST_IP}/24", script=guest.TICKER_SCRIPT),
        )

        started = time.monotonic()
        dom = conn1.defineXML(xml)
        dom.create()

        def console_text() -> str:
            return console.read_text(errors="replace") if console.exists() else ""

        _poll(
            "the guest's ready marker",
            lambda: guest.READY_MARKER in console_text(),
            timeout=BOOT_DEADLINE_S,
        )
        print(f"boot to ready marker: {time.monotonic() - started:.2f}s")
        assert f"{guest.MAC_MARKER}{GUEST_MAC}" in console_text()
        _poll(
            "ping to the guest on node-1 from the fabric",
            lambda: _ping_from_fabric(cluster, GUEST_IP),
            timeout=30,
        )

        # UNSAFE: libvirt only trusts NFS/GFS2/Ceph-like filesystems as shared storage; the
        # shared directory is one local filesystem seen by both nodes, which is safe.
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_UNSAFE
        )
        _poll("the guest's counter", lambda: guest.console_mark(console).tick > 0, timeout=60)
        mark = guest.console_mark(console)
        migration_started = time.monotonic()
        dom.migrateToURI3(node2.tcp_uri, {}, flags)
        switched = guest.console_mark(console)  # from here on only node-2's QEMU prints
        print(f"migrateToURI3 returned after {time.monotonic() - migration_started:.2f}s")

        moved = conn2.lookupByName("vm1")
        state, _reason = moved.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        assert moved.isPersistent()
        assert [d.name() for d in conn1.listAllDomains()] == []
        assert GUEST_MAC in moved.XMLDesc()
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        print(
            "migration job: time_elapsed={}ms downtime={}ms data_total={}B "
            "memory_iteration={}".format(
                stats.get("time_elapsed"),
                stats.get("downtime"),
                stats.get("data_total"),
                stats.get("memory_iteration"),
            )
        )
        # the guest survived: it counts on, on node-2 (a tick after the switch), and never
        # booted again since before the migration
        _poll(
            "the migrated guest counts on",
            lambda: guest.kept_running(console, switched),
            timeout=60,
        )
        assert guest.kept_running(console, mark)
        _poll(
            "ping to the migrated guest on node-2 from the fabric",
            lambda: _ping_from_fabric(cluster, GUEST_IP),
            timeout=30,
        )
    finally:
        conn1.close()
        conn2.close()

    nodes.destroy_cluster_nodes(cluster)
    assert _live_processes_mentioning(str(node1.shared_dir)) == []
    for node in sim_nodes:
        assert not _running(node.libvirtd_pid)
        assert not _running(node.virtlogd_pid)
    assert _cluster_netns(cluster) == []
    assert not node1.state_dir.exists()
