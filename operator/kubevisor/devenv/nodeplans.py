"""Simulated nodes as data: names, addresses, paths and config files of a cluster; pure.

Everything here is computed before anything is created (:func:`plan_cluster`) or read
back from the cluster state file (:class:`SimNode`), so it is table-testable without
root. The processes, namespaces and mounts that realize a plan are
:mod:`kubevisor.devenv.nodelifecycle`; what a simulated node is, and the CLI, are
:mod:`kubevisor.devenv.nodes`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

DEFAULT_BASE_DIR = Path(os.environ.get("KUBEVISOR_DEV_DIR", "/var/lib/kubevisor-dev"))
FABRIC_NETWORK = ipaddress.IPv4Network("10.77.0.0/24")
FABRIC_GATEWAY = ipaddress.IPv4Address("10.77.0.1")
FIRST_NODE_HOST = 10
LIBVIRT_TCP_PORT = 16509
NODE_BRIDGE = "kvbr0"
NODE_UPLINK = "fab0"
FABRIC_BRIDGE = "fabric"
#: The management network: every node's ``mgmt0`` (not a bridge, never a VM LAN) on the
#: fabric namespace's bridge ``mgmt``; node-i is 10.78.0.(10+i).
MANAGEMENT_NETWORK = ipaddress.IPv4Network("10.78.0.0/24")
MANAGEMENT_GATEWAY = ipaddress.IPv4Address("10.78.0.1")
MANAGEMENT_BRIDGE = "mgmt"
NODE_MANAGEMENT = "mgmt0"
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

    @property
    def management_ip(self) -> str:
        """The node's address on the management network (its ``mgmt0``)."""
        return str(management_ip(self.index))

    @property
    def management_uri(self) -> str:
        """The node's libvirtd over the management network."""
        return f"qemu+tcp://{self.management_ip}/system"

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


def management_ip(index: int) -> ipaddress.IPv4Address:
    """Node ``index``'s address on the management network (pure)."""
    return MANAGEMENT_NETWORK.network_address + FIRST_NODE_HOST + index


def check_cluster_name(cluster: str) -> None:
    """Refuse a cluster name that would not fit in a netns or interface name."""
    if not _CLUSTER_NAME.match(cluster):
        raise NodesError(f"cluster name {cluster!r} must match {_CLUSTER_NAME.pattern}")


def fabric_netns_name(cluster: str) -> str:
    """Network namespace holding the fabric bridge of ``cluster``."""
    return f"kv-{cluster}-fabric"


def node_name(index: int) -> str:
    """Node names are ``node-1``, ``node-2``, ... (1-based, stable across runs)."""
    return f"node-{index}"


def plan_cluster(cluster: str, count: int, *, base_dir: Path) -> ClusterPlan:
    """Compute every name, address and path of a cluster of ``count`` nodes."""
    check_cluster_name(cluster)
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
        # every address of the node's own namespace: the fabric and the management network
        'listen_addr = "0.0.0.0"\n'
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
