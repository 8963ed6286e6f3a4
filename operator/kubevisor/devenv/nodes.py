"""Simulated nodes: a libvirtd + network per "node", all on one Linux host.

Why: e2e tests and the dev environment need several hypervisor nodes (placement, live
migration between nodes, per-node networks) without several machines. A simulated node is

- a network namespace ``kv-<cluster>-node-<i>`` with a bridge ``kvbr0`` that enslaves the
  veth ``fab0``; the node address ``10.77.0.(10+i)/24`` sits on ``kvbr0``, so guest NICs
  attached to ``kvbr0`` share the LAN with guests on other nodes;
- a private mount namespace (and UTS namespace, hostname = node name) in which
  ``/run/libvirt``, ``/var/lib/libvirt``, ``/etc/libvirt``, ``/var/log/libvirt`` and
  ``/var/cache/libvirt`` are bind mounts of the node's state directory, and ``/run/dbus``
  is an empty directory (so libvirtd never registers guests with the host's
  systemd-machined, where two nodes running the same domain during a migration would
  collide);
- its own ``virtlogd`` and ``libvirtd`` (own random ``host_uuid``, TCP on the fabric
  address, port 16509, no auth) so ``qemu+tcp://10.77.0.X/system`` peer-to-peer
  migration works between nodes.

Nodes share a "fabric" (a bridge in netns ``kv-<cluster>-fabric``, address 10.77.0.1/24,
one veth per node) and a storage directory ``<base>/<cluster>/shared`` visible at the same
path on every node (the NAS), so migration needs no block copy.

The namespaces are pinned by bind mounts of ``/proc/<pid>/ns/{mnt,uts}`` onto files under
``<base>/<cluster>/ns/`` (``unshare --mount=FILE``), so they outlive any process; enter
them with :func:`node_mount_exec_prefix` / :func:`node_full_exec_prefix`. From the host,
the node's libvirtd is reachable at ``qemu+unix:///system?socket=<state>/run/libvirt/
libvirt-sock`` because the bind-mount source is an ordinary host directory.

Everything runs as root through the standard tools (``ip``, ``unshare``, ``nsenter``,
``mount``, ``libvirtd``, ``virtlogd``, ``virsh``); this is dev tooling, not agent code.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DEFAULT_BASE_DIR = Path(os.environ.get("KUBEVISOR_DEV_DIR", "/var/lib/kubevisor-dev"))
FABRIC_NETWORK = ipaddress.IPv4Network("10.77.0.0/24")
FABRIC_GATEWAY = ipaddress.IPv4Address("10.77.0.1")
FIRST_NODE_HOST = 10
LIBVIRT_TCP_PORT = 16509
NODE_BRIDGE = "kvbr0"
NODE_UPLINK = "fab0"
FABRIC_BRIDGE = "fabric"
# Node addresses are .11-.99; .1 is the fabric (test client/gateway); .100-.254 are
# left for guests with static addresses.
MAX_NODES = 89
FIRST_GUEST_ADDRESS = ipaddress.IPv4Address("10.77.0.100")

# Directories bind-mounted from the node state dir over the host path, per node.
NODE_MOUNTS: tuple[tuple[str, str], ...] = (
    ("run/libvirt", "/run/libvirt"),
    ("lib/libvirt", "/var/lib/libvirt"),
    ("etc/libvirt", "/etc/libvirt"),
    ("log/libvirt", "/var/log/libvirt"),
    ("cache/libvirt", "/var/cache/libvirt"),
    ("run/dbus", "/run/dbus"),
    ("etc/hosts", "/etc/hosts"),
)
_UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), including the NUL
_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")


class NodesError(RuntimeError):
    """A simulated-node operation failed; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class SimNode:
    """One simulated node, as created; everything a test or an agent launcher needs.

    ``libvirt_uri`` works from the host; ``tcp_uri`` works from inside other nodes' network
    namespaces (it is what peer-to-peer migration uses).
    """

    name: str
    cluster: str
    index: int
    netns: str
    fabric_ip: str
    state_dir: Path
    shared_dir: Path
    libvirt_uri: str
    tcp_uri: str
    host_uuid: str
    mnt_ns_file: Path
    uts_ns_file: Path
    libvirtd_pid: int
    virtlogd_pid: int

    def to_json(self) -> dict[str, object]:
        """Plain JSON for the cluster state file and ``status`` output."""
        data = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SimNode:
        """Inverse of :meth:`to_json`."""
        kwargs: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            value = data[field.name]
            if field.name in {"state_dir", "shared_dir", "mnt_ns_file", "uts_ns_file"}:
                value = Path(str(value))
            kwargs[field.name] = value
        return cls(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Pure planning: names, addresses, paths, config files.


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """Names and paths of one node, computed before anything is created."""

    name: str
    index: int
    netns: str
    fabric_port: str
    fabric_ip: ipaddress.IPv4Address
    state_dir: Path
    mnt_ns_file: Path
    uts_ns_file: Path

    @property
    def socket_path(self) -> Path:
        """Host-visible path of the node's libvirtd read-write socket."""
        return self.state_dir / "run/libvirt/libvirt-sock"

    @property
    def libvirt_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://{self.fabric_ip}/system"


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """The whole simulated cluster: fabric, shared storage, nodes."""

    cluster: str
    base_dir: Path
    fabric_netns: str
    nodes: tuple[NodePlan, ...]

    @property
    def cluster_dir(self) -> Path:
        return self.base_dir / self.cluster

    @property
    def ns_dir(self) -> Path:
        return self.cluster_dir / "ns"

    @property
    def shared_dir(self) -> Path:
        return self.cluster_dir / "shared"

    @property
    def state_file(self) -> Path:
        return self.cluster_dir / "cluster.json"


def fabric_netns_name(cluster: str) -> str:
    """Network namespace holding the fabric bridge of ``cluster``."""
    return f"kv-{cluster}-fabric"


def node_name(index: int) -> str:
    """Node names are ``node-1``, ``node-2``, ... (1-based, stable across runs)."""
    return f"node-{index}"


def plan_cluster(cluster: str, count: int, *, base_dir: Path) -> ClusterPlan:
    """Compute every name, address and path of a cluster of ``count`` nodes."""
    if not _CLUSTER_NAME.match(cluster):
        raise NodesError(f"cluster name {cluster!r} must match {_CLUSTER_NAME.pattern}")
    if not 1 <= count <= MAX_NODES:
        raise NodesError(f"node count {count} must be between 1 and {MAX_NODES}")
    cluster_dir = base_dir / cluster
    nodes = []
    for index in range(1, count + 1):
        name = node_name(index)
        nodes.append(
            NodePlan(
                name=name,
                index=index,
                netns=f"kv-{cluster}-{name}",
                fabric_port=f"n{index}",
                fabric_ip=FABRIC_NETWORK.network_address + FIRST_NODE_HOST + index,
                state_dir=cluster_dir / "nodes" / name,
                mnt_ns_file=cluster_dir / "ns" / f"{name}.mnt",
                uts_ns_file=cluster_dir / "ns" / f"{name}.uts",
            )
        )
    longest = max(len(str(node.socket_path)) for node in nodes)
    if longest >= _UNIX_PATH_MAX:
        raise NodesError(
            f"base dir {base_dir} is too long: libvirt socket paths would be {longest} "
            f"characters, the kernel allows {_UNIX_PATH_MAX - 1}"
        )
    return ClusterPlan(
        cluster=cluster,
        base_dir=base_dir,
        fabric_netns=fabric_netns_name(cluster),
        nodes=tuple(nodes),
    )


def render_libvirtd_conf(node: NodePlan, *, host_uuid: str) -> str:
    """libvirtd.conf: TCP without auth on the fabric address only, own host UUID.

    No auth is acceptable because the address exists only inside the node's and the
    fabric's network namespaces; unix socket auth is off so root clients need no polkit.
    """
    return (
        "# generated by kubevisor.devenv.nodes\n"
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{node.fabric_ip}"\n'
        f'tcp_port = "{LIBVIRT_TCP_PORT}"\n'
        'auth_tcp = "none"\n'
        'unix_sock_group = "root"\n'
        'unix_sock_rw_perms = "0770"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
        f'host_uuid = "{host_uuid}"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        # Two cores shared by several nodes' QEMU (TCG) can starve a libvirtd for seconds;
        # the default keepalive (5 s x 5) then drops peers mid-migration.
        "keepalive_interval = 10\n"
        "keepalive_count = 12\n"
    )


def render_qemu_conf(node: NodePlan) -> str:
    """qemu.conf: QEMU as root, no cgroups, no sandboxing, migration on the fabric IP.

    ``migration_host``/``migration_address`` matter because every node shares the host's
    resolvable hostname; without them the destination would advertise an address that
    is not reachable from the source node's namespace.
    """
    return (
        "# generated by kubevisor.devenv.nodes\n"
        'user = "root"\n'
        'group = "root"\n'
        "dynamic_ownership = 0\n"
        "remember_owner = 0\n"
        'security_driver = "none"\n'
        "namespaces = []\n"
        "cgroup_controllers = []\n"
        'stdio_handler = "logd"\n'
        f'migration_host = "{node.fabric_ip}"\n'
        f'migration_address = "{node.fabric_ip}"\n'
        "migration_port_min = 49152\n"
        "migration_port_max = 49215\n"
        'lock_manager = "nop"\n'
        # Keepalive of the peer-to-peer migration connection to the destination libvirtd
        # (see libvirtd.conf above for why it is relaxed).
        "keepalive_interval = 10\n"
        "keepalive_count = 12\n"
    )


def render_hosts(plan: ClusterPlan, *, host_hosts: str) -> str:
    """/etc/hosts of a node: the host's entries plus every node name on the fabric.

    Nodes share the host's hostname resolution otherwise; node names must resolve so
    libvirt and tools inside a node can address peers by name.
    """
    lines = [host_hosts.rstrip("\n"), "# simulated nodes (kubevisor.devenv.nodes)"]
    lines += [f"{node.fabric_ip}\t{node.name}" for node in plan.nodes]
    return "\n".join(lines) + "\n"


def render_virtlogd_conf() -> str:
    """virtlogd.conf: log to the node's own /var/log/libvirt."""
    return (
        "# generated by kubevisor.devenv.nodes\n"
        'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'
    )


def mount_setup_script(node: NodePlan) -> str:
    """Shell run as the first process of the node's new mount namespace.

    It creates the mount points (harmless empty directories on the host if missing) and
    bind-mounts the node's state directories over them; the hostname is set in the node's
    own UTS namespace.
    """
    lines = ["set -e", f"hostname {node.name}"]
    for rel, target in NODE_MOUNTS:
        src = node.state_dir / rel
        if rel != "etc/hosts":
            lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {src} {target}")
    return "\n".join(lines) + "\n"


def node_mount_exec_prefix(node: SimNode) -> list[str]:
    """Command prefix that runs a program in the node's mount namespace only.

    For the agent: it sees the node's ``/run/libvirt`` (so ``qemu:///system`` is the
    node's libvirtd) but keeps the host network namespace, so it reaches the
    kube-apiserver on the host's 127.0.0.1; it does netlink in the node via the netns
    name (``/run/netns/<node.netns>``). Note: entering a mount namespace resets the cwd
    to ``/``; use absolute paths or nsenter's ``--wd``.
    """
    return ["nsenter", f"--mount={node.mnt_ns_file}", "--"]


def node_full_exec_prefix(node: SimNode) -> list[str]:
    """Command prefix that runs a program fully "on" the node: mount, UTS and network."""
    return [
        "nsenter",
        f"--mount={node.mnt_ns_file}",
        f"--uts={node.uts_ns_file}",
        f"--net=/run/netns/{node.netns}",
        "--",
    ]


# ---------------------------------------------------------------------------------------
# Adapters: processes, namespaces, mounts.


def _run(args: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a command, return stdout; raise NodesError with stderr when it fails."""
    proc = subprocess.run(list(args), input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodesError(f"{' '.join(args)!r} failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _wait_for(what: str, condition: Callable[[], bool], *, timeout: float) -> None:
    """Poll ``condition`` until true or the deadline passes (then raise)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise NodesError(f"timed out after {timeout:.0f}s waiting for {what}")
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


def _create_fabric(plan: ClusterPlan) -> None:
    ns = plan.fabric_netns
    if not _netns_exists(ns):
        _run(["ip", "netns", "add", ns])
    _ip("link", "set", "lo", "up", netns=ns)
    _ip("link", "add", FABRIC_BRIDGE, "type", "bridge", "stp_state", "0", netns=ns)
    _ip(
        "addr",
        "add",
        f"{FABRIC_GATEWAY}/{FABRIC_NETWORK.prefixlen}",
        "dev",
        FABRIC_BRIDGE,
        netns=ns,
    )
    _ip("link", "set", FABRIC_BRIDGE, "up", netns=ns)


def _create_node_network(plan: ClusterPlan, node: NodePlan) -> None:
    ns = node.netns
    if not _netns_exists(ns):
        _run(["ip", "netns", "add", ns])
    _ip("link", "set", "lo", "up", netns=ns)
    # Create the pair inside the fabric namespace so no name touches the host namespace.
    _ip(
        "link",
        "add",
        node.fabric_port,
        "type",
        "veth",
        "peer",
        "name",
        NODE_UPLINK,
        "netns",
        ns,
        netns=plan.fabric_netns,
    )
    _ip("link", "set", node.fabric_port, "master", FABRIC_BRIDGE, "up", netns=plan.fabric_netns)
    _ip("link", "add", NODE_BRIDGE, "type", "bridge", "stp_state", "0", netns=ns)
    _ip("link", "set", NODE_UPLINK, "master", NODE_BRIDGE, "up", netns=ns)
    _ip("addr", "add", f"{node.fabric_ip}/{FABRIC_NETWORK.prefixlen}", "dev", NODE_BRIDGE, netns=ns)
    _ip("link", "set", NODE_BRIDGE, "up", netns=ns)


def _prepare_state_dir(plan: ClusterPlan, node: NodePlan, *, host_uuid: str) -> None:
    for rel, _target in NODE_MOUNTS:
        if rel != "etc/hosts":
            (node.state_dir / rel).mkdir(parents=True, exist_ok=True)
    host_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    (node.state_dir / "etc/hosts").write_text(render_hosts(plan, host_hosts=host_hosts))
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
    (etc / "libvirtd.conf").write_text(render_libvirtd_conf(node, host_uuid=host_uuid))
    (etc / "qemu.conf").write_text(render_qemu_conf(node))
    (etc / "virtlogd.conf").write_text(render_virtlogd_conf())


def _caps_seed_dir(base_dir: Path) -> Path:
    """Per-host copy of libvirt's QEMU capabilities cache, shared by all clusters."""
    return base_dir / ".qemu-capabilities"


def _caps_dir(node: NodePlan) -> Path:
    return node.state_dir / "cache/libvirt/qemu/capabilities"


def _seed_capabilities(plan: ClusterPlan) -> None:
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


def _create_mount_ns(node: NodePlan) -> None:
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
            mount_setup_script(node),
        ]
    )


def _read_pid(path: Path) -> int:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else 0


def _alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


def _start_daemons(node: NodePlan) -> tuple[int, int]:
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
    cluster: str, count: int, *, base_dir: Path = DEFAULT_BASE_DIR
) -> list[SimNode]:
    """Create the fabric, shared storage and ``count`` nodes with running libvirtds.

    Any leftover of a cluster with the same name is destroyed first. On failure the
    partial cluster is destroyed and the error re-raised.
    """
    plan = plan_cluster(cluster, count, base_dir=base_dir)
    destroy_cluster_nodes(cluster, base_dir=base_dir)
    try:
        plan.shared_dir.mkdir(parents=True, exist_ok=True)
        _make_private_dir(plan.ns_dir)
        _create_fabric(plan)
        nodes: list[SimNode] = []
        for node in plan.nodes:
            host_uuid = str(uuid.uuid4())
            _create_node_network(plan, node)
            _prepare_state_dir(plan, node, host_uuid=host_uuid)
            _create_mount_ns(node)
            libvirtd_pid, virtlogd_pid = _start_daemons(node)
            nodes.append(
                SimNode(
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


def load_cluster_nodes(cluster: str, *, base_dir: Path = DEFAULT_BASE_DIR) -> list[SimNode]:
    """The nodes of a cluster created earlier (possibly by another process)."""
    state_file = base_dir / cluster / "cluster.json"
    if not state_file.exists():
        return []
    data = json.loads(state_file.read_text())
    return [SimNode.from_json(item) for item in data["nodes"]]


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
        raise NodesError(f"processes survived SIGKILL: {left}")


def _cluster_netns(cluster: str) -> list[str]:
    pattern = re.compile(rf"^kv-{re.escape(cluster)}-(fabric|node-\d+)$")
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if pattern.match(n))


def destroy_cluster_nodes(cluster: str, *, base_dir: Path = DEFAULT_BASE_DIR) -> None:
    """Remove every trace of a cluster: processes, pins, mounts, netns, state.

    Works from whatever exists (not from the state file), so it is idempotent and safe
    on a partially created cluster. Processes are found by namespace, so QEMU guests,
    libvirtd, virtlogd and anything an agent started inside a node all go.
    """
    if not _CLUSTER_NAME.match(cluster):
        raise NodesError(f"cluster name {cluster!r} must match {_CLUSTER_NAME.pattern}")
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
                raise NodesError(f"{mount_point} is still mounted; not deleting {path}")


# ---------------------------------------------------------------------------------------
# CLI.


def node_status(node: SimNode) -> dict[str, object]:
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


def _print_nodes(nodes: Iterable[SimNode]) -> None:
    for node in nodes:
        print(json.dumps(node_status(node)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kubevisor.devenv.nodes {up,down,status} --cluster NAME [--count N]``."""
    parser = argparse.ArgumentParser(
        prog="kubevisor.devenv.nodes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base-dir", type=Path, default=DEFAULT_BASE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create (or recreate) a simulated cluster")
    up.add_argument("--cluster", default="dev")
    up.add_argument("--count", type=int, default=2)
    down = sub.add_parser("down", help="destroy a simulated cluster")
    down.add_argument("--cluster", default="dev")
    status = sub.add_parser("status", help="show the nodes of a cluster")
    status.add_argument("--cluster", default="dev")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("simulated nodes need root", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            _print_nodes(create_cluster_nodes(args.cluster, args.count, base_dir=args.base_dir))
        elif args.command == "down":
            destroy_cluster_nodes(args.cluster, base_dir=args.base_dir)
        else:
            nodes = load_cluster_nodes(args.cluster, base_dir=args.base_dir)
            if not nodes:
                print(f"cluster {args.cluster!r} has no nodes", file=sys.stderr)
                return 1
            _print_nodes(nodes)
    except NodesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
