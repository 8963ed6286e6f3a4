"""Simulated nodes' lifecycle: fabric, node networks, mount namespaces, libvirtd, teardown.

The adapters that realize a :class:`~kubevisor.devenv.nodeplans.ClusterPlan` through the
standard tools (``ip``, ``unshare``, ``nsenter``, ``mount``, ``libvirtd``, ``virtlogd``,
``virsh``), as root, and remove every trace of it again. What a simulated node is:
:mod:`kubevisor.devenv.nodes`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from kubevisor.devenv import nodeplans


def _run(args: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a command, return stdout; raise nodeplans.NodesError with stderr when it fails."""
    proc = subprocess.run(list(args), input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise nodeplans.NodesError(
            f"{' '.join(args)!r} failed (rc={proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


def _wait_for(what: str, condition: Callable[[], bool], *, timeout: float) -> None:
    """Poll ``condition`` until true or the deadline passes (then raise)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise nodeplans.NodesError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    _run([*prefix, *args])


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _is_mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def _make_private_dir(path: Path) -> None:
    """Bind ``path`` onto itself with private propagation.

    Pinning a namespace by bind-mounting its nsfs file fails on a shared mount (as ``/``
    is on systemd hosts); ``ip netns`` does the same trick for ``/run/netns``.
    """
    path.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(path):
        _run(["mount", "--bind", str(path), str(path)])
    _run(["mount", "--make-private", str(path)])


def _create_netns(ns: str) -> None:
    if not _netns_exists(ns):
        _run(["ip", "netns", "add", ns])
    _ip("link", "set", "lo", "up", netns=ns)


def _create_bridge(ns: str, bridge: str, address: str, *, ports: Sequence[str] = ()) -> None:
    """A bridge (STP off) in ``ns`` with ``ports`` enslaved and up, then ``address``, then up."""
    _ip("link", "add", bridge, "type", "bridge", "stp_state", "0", netns=ns)
    for port in ports:
        _ip("link", "set", port, "master", bridge, "up", netns=ns)
    _ip("addr", "add", address, "dev", bridge, netns=ns)
    _ip("link", "set", bridge, "up", netns=ns)


def _create_fabric(plan: nodeplans.ClusterPlan) -> None:
    prefixlen = nodeplans.FABRIC_NETWORK.prefixlen
    _create_netns(plan.fabric_netns)
    _create_bridge(
        plan.fabric_netns, nodeplans.FABRIC_BRIDGE, f"{nodeplans.FABRIC_GATEWAY}/{prefixlen}"
    )
    _create_bridge(
        plan.fabric_netns,
        nodeplans.MANAGEMENT_BRIDGE,
        f"{nodeplans.MANAGEMENT_GATEWAY}/{nodeplans.MANAGEMENT_NETWORK.prefixlen}",
    )


def _create_node_network(plan: nodeplans.ClusterPlan, node: nodeplans.NodePlan) -> None:
    ns = node.netns
    _create_netns(ns)
    # Create the pair inside the fabric namespace so no name touches the host namespace.
    _ip(
        "link",
        "add",
        node.fabric_port,
        "type",
        "veth",
        "peer",
        "name",
        nodeplans.NODE_UPLINK,
        "netns",
        ns,
        netns=plan.fabric_netns,
    )
    _ip(
        "link",
        "set",
        node.fabric_port,
        "master",
        nodeplans.FABRIC_BRIDGE,
        "up",
        netns=plan.fabric_netns,
    )
    address = f"{node.fabric_ip}/{nodeplans.FABRIC_NETWORK.prefixlen}"
    _create_bridge(ns, nodeplans.NODE_BRIDGE, address, ports=(nodeplans.NODE_UPLINK,))
    # The management NIC: a plain veth with its own address, on its own bridge in the
    # fabric namespace; nothing of a guest is ever attached to it.
    port = f"m{node.index}"
    _ip("link", "add", port, "type", "veth", "peer", "name", nodeplans.NODE_MANAGEMENT,
        "netns", ns, netns=plan.fabric_netns)  # fmt: skip
    _ip("link", "set", port, "master", nodeplans.MANAGEMENT_BRIDGE, "up", netns=plan.fabric_netns)
    mgmt = f"{nodeplans.management_ip(node.index)}/{nodeplans.MANAGEMENT_NETWORK.prefixlen}"
    _ip("addr", "add", mgmt, "dev", nodeplans.NODE_MANAGEMENT, netns=ns)
    _ip("link", "set", nodeplans.NODE_MANAGEMENT, "up", netns=ns)


def _prepare_state_dir(
    plan: nodeplans.ClusterPlan, node: nodeplans.NodePlan, *, host_uuid: str
) -> None:
    for rel, _target in nodeplans.NODE_MOUNTS:
        if rel != "etc/hosts":
            (node.state_dir / rel).mkdir(parents=True, exist_ok=True)
    host_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    (node.state_dir / "etc/hosts").write_text(nodeplans.render_hosts(plan, host_hosts=host_hosts))
    for sub in ("lib/libvirt/qemu", "lib/libvirt/images", "log/libvirt/qemu", "run/libvirt/qemu"):
        (node.state_dir / sub).mkdir(parents=True, exist_ok=True)
    etc = node.state_dir / "etc/libvirt"
    if Path("/etc/libvirt").is_dir():
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
    # A node starts empty: no host domains, networks or pools, nothing autostarted
    # (a default NAT network would start a dnsmasq per node).
    qemu_dir = etc / "qemu"
    if qemu_dir.is_dir():
        for entry in qemu_dir.iterdir():
            if entry.is_file() and entry.suffix == ".xml":
                entry.unlink()
    for rel in ("qemu/autostart", "qemu/networks/autostart", "storage/autostart"):
        shutil.rmtree(etc / rel, ignore_errors=True)
    (etc / "libvirtd.conf").write_text(nodeplans.render_libvirtd_conf(node, host_uuid=host_uuid))
    (etc / "qemu.conf").write_text(nodeplans.render_qemu_conf(node))
    (etc / "virtlogd.conf").write_text(nodeplans.render_virtlogd_conf())


def _caps_seed_dir(base_dir: Path) -> Path:
    """Per-host copy of libvirt's QEMU capabilities cache, shared by all clusters."""
    return base_dir / ".qemu-capabilities"


def _caps_dir(node: nodeplans.NodePlan) -> Path:
    return node.state_dir / "cache/libvirt/qemu/capabilities"


def _seed_capabilities(plan: nodeplans.ClusterPlan) -> None:
    """Give every node a warm QEMU capabilities cache.

    Why: a fresh libvirtd probes QEMU on first use (about 4 s under TCG here), which every
    node of every test would otherwise pay on its first define and, for a migration
    target, inside the migration. All nodes run the same binaries, so one probe serves
    all; libvirt re-validates cached entries (binary ctime, versions) and re-probes if
    they are stale, so a wrong seed costs time, never correctness.
    """
    seed = _caps_seed_dir(plan.base_dir)
    if not any(seed.glob("*.xml")):
        first = plan.nodes[0]
        probe = ["domcapabilities", "--virttype", "qemu", "--arch", "x86_64"]
        _run(["virsh", "-q", "-c", first.libvirt_uri, *probe])
        tmp = plan.base_dir / f".qemu-capabilities.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(_caps_dir(first), tmp)
        shutil.rmtree(seed, ignore_errors=True)
        os.replace(tmp, seed)  # atomic for concurrent creators
    for node in plan.nodes:
        target = _caps_dir(node)
        target.mkdir(parents=True, exist_ok=True)
        for entry in seed.glob("*.xml"):
            if not (target / entry.name).exists():
                shutil.copy2(entry, target / entry.name)


def _create_mount_ns(node: nodeplans.NodePlan) -> None:
    for pin in (node.mnt_ns_file, node.uts_ns_file):
        pin.touch()
    _run(
        [
            "unshare",
            f"--mount={node.mnt_ns_file}",
            f"--uts={node.uts_ns_file}",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            nodeplans.mount_setup_script(node),
        ]
    )


def _read_pid(path: Path) -> int:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else 0


def _alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


def _start_daemons(node: nodeplans.NodePlan) -> tuple[int, int]:
    """Start virtlogd and libvirtd inside the node; return their pids once serving."""
    prefix = [
        "nsenter",
        f"--mount={node.mnt_ns_file}",
        f"--uts={node.uts_ns_file}",
        f"--net=/run/netns/{node.netns}",
        "--",
    ]
    run_dir = node.state_dir / "run/libvirt"
    _run([*prefix, "virtlogd", "-d", "-p", "/run/libvirt/virtlogd.pid"])
    _wait_for(
        f"virtlogd of {node.name}",
        lambda: (
            (run_dir / "virtlogd-sock").exists() and _alive(_read_pid(run_dir / "virtlogd.pid"))
        ),
        timeout=30,
    )
    _run([*prefix, "libvirtd", "-d", "--listen", "-p", "/run/libvirt/libvirtd.pid"])

    def serving() -> bool:
        if not node.socket_path.exists():
            return False
        probe = subprocess.run(
            ["virsh", "-q", "-c", node.libvirt_uri, "uri"], capture_output=True, check=False
        )
        return probe.returncode == 0

    _wait_for(f"libvirtd of {node.name} at {node.socket_path}", serving, timeout=60)
    return _read_pid(run_dir / "libvirtd.pid"), _read_pid(run_dir / "virtlogd.pid")


def create_cluster_nodes(
    cluster: str, count: int, *, base_dir: Path = nodeplans.DEFAULT_BASE_DIR
) -> list[nodeplans.SimNode]:
    """Create the fabric, shared storage and ``count`` nodes with running libvirtds.

    Any leftover of a cluster with the same name is destroyed first. On failure the
    partial cluster is destroyed and the error re-raised.
    """
    plan = nodeplans.plan_cluster(cluster, count, base_dir=base_dir)
    destroy_cluster_nodes(cluster, base_dir=base_dir)
    try:
        plan.shared_dir.mkdir(parents=True, exist_ok=True)
        _make_private_dir(plan.ns_dir)
        _create_fabric(plan)
        nodes: list[nodeplans.SimNode] = []
        for node in plan.nodes:
            host_uuid = str(uuid.uuid4())
            _create_node_network(plan, node)
            _prepare_state_dir(plan, node, host_uuid=host_uuid)
            _create_mount_ns(node)
            libvirtd_pid, virtlogd_pid = _start_daemons(node)
            nodes.append(
                nodeplans.SimNode(
                    name=node.name,
                    cluster=cluster,
                    index=node.index,
                    netns=node.netns,
                    fabric_ip=str(node.fabric_ip),
                    state_dir=node.state_dir,
                    shared_dir=plan.shared_dir,
                    libvirt_uri=node.libvirt_uri,
                    tcp_uri=node.tcp_uri,
                    host_uuid=host_uuid,
                    mnt_ns_file=node.mnt_ns_file,
                    uts_ns_file=node.uts_ns_file,
                    libvirtd_pid=libvirtd_pid,
                    virtlogd_pid=virtlogd_pid,
                )
            )
        _seed_capabilities(plan)
        plan.state_file.write_text(
            json.dumps({"cluster": cluster, "nodes": [n.to_json() for n in nodes]}, indent=2)
        )
        return nodes
    except BaseException:
        destroy_cluster_nodes(cluster, base_dir=base_dir)
        raise


def load_cluster_nodes(
    cluster: str, *, base_dir: Path = nodeplans.DEFAULT_BASE_DIR
) -> list[nodeplans.SimNode]:
    """The nodes of a cluster created earlier (possibly by another process)."""
    state_file = base_dir / cluster / "cluster.json"
    if not state_file.exists():
        return []
    data = json.loads(state_file.read_text())
    return [nodeplans.SimNode.from_json(item) for item in data["nodes"]]


# ---------------------------------------------------------------------------------------
# Teardown.


def _ns_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino if _is_mountpoint(path) else None
    except OSError:
        return None


def _pids_in_namespaces(kind: str, inodes: set[int]) -> list[int]:
    """Pids whose ``/proc/<pid>/ns/<kind>`` is one of ``inodes`` (pure scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/{kind}").st_ino in inodes:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _kill_all(pids_of: Callable[[], list[int]], *, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL what is left, until nothing is left (or raise)."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        pids = pids_of()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids_of() and time.monotonic() < deadline:
            time.sleep(0.05)
    left = pids_of()
    if left:
        raise nodeplans.NodesError(f"processes survived SIGKILL: {left}")


def _cluster_netns(cluster: str) -> list[str]:
    pattern = re.compile(rf"^kv-{re.escape(cluster)}-(fabric|node-\d+)$")
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if pattern.match(n))


def destroy_cluster_nodes(cluster: str, *, base_dir: Path = nodeplans.DEFAULT_BASE_DIR) -> None:
    """Remove every trace of a cluster: processes, pins, mounts, netns, state.

    Works from whatever exists (not from the state file), so it is idempotent and safe
    on a partially created cluster. Processes are found by namespace, so QEMU guests,
    libvirtd, virtlogd and anything an agent started inside a node all go.
    """
    nodeplans.check_cluster_name(cluster)
    cluster_dir = base_dir / cluster
    ns_dir = cluster_dir / "ns"
    pins = sorted(ns_dir.glob("*.mnt")) + sorted(ns_dir.glob("*.uts")) if ns_dir.is_dir() else []
    netns_names = _cluster_netns(cluster)

    mnt_inodes = {i for p in pins if p.suffix == ".mnt" and (i := _ns_inode(p)) is not None}
    net_inodes = {i for n in netns_names if (i := _ns_inode(Path("/run/netns", n))) is not None}

    def pids() -> list[int]:
        return sorted(
            set(_pids_in_namespaces("mnt", mnt_inodes))
            | set(_pids_in_namespaces("net", net_inodes))
        )

    _kill_all(pids)
    for pin in pins:
        if _is_mountpoint(pin):
            _run(["umount", str(pin)])
    if ns_dir.is_dir() and _is_mountpoint(ns_dir):
        _run(["umount", str(ns_dir)])
    for name in netns_names:
        _run(["ip", "netns", "del", name])
    if cluster_dir.exists():
        _assert_nothing_mounted_under(cluster_dir)
        shutil.rmtree(cluster_dir)


def _assert_nothing_mounted_under(path: Path) -> None:
    """Refuse to rm -rf a directory that still has a mount below it (in this namespace)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            if mount_point.startswith(prefix) or mount_point == prefix[:-1]:
                raise nodeplans.NodesError(f"{mount_point} is still mounted; not deleting {path}")


def node_status(node: nodeplans.SimNode) -> dict[str, object]:
    """Liveness of one node's daemons plus its identifying facts."""
    return {
        "name": node.name,
        "fabric_ip": node.fabric_ip,
        "netns": node.netns,
        "host_uuid": node.host_uuid,
        "libvirt_uri": node.libvirt_uri,
        "libvirtd": "running" if _alive(node.libvirtd_pid) else "stopped",
        "virtlogd": "running" if _alive(node.virtlogd_pid) else "stopped",
        "netns_present": _netns_exists(node.netns),
    }
