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

The pure plan (names, addresses, paths, config files) is :mod:`kubevisor.devenv.nodeplans`;
creating and destroying nodes is :mod:`kubevisor.devenv.nodelifecycle`. This module is the
CLI (``python -m kubevisor.devenv.nodes``, what ``hack/nodes`` runs) and the one place tests
and tools import simulated nodes from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from kubevisor.devenv.nodelifecycle import (
    create_cluster_nodes,
    destroy_cluster_nodes,
    load_cluster_nodes,
    node_status,
)
from kubevisor.devenv.nodeplans import (
    DEFAULT_BASE_DIR,
    FABRIC_BRIDGE,
    FABRIC_GATEWAY,
    FABRIC_NETWORK,
    FIRST_GUEST_ADDRESS,
    FIRST_NODE_HOST,
    LIBVIRT_TCP_PORT,
    MAX_NODES,
    NODE_BRIDGE,
    NODE_MANAGEMENT,
    NODE_MOUNTS,
    NODE_UPLINK,
    ClusterPlan,
    NodePlan,
    NodesError,
    SimNode,
    check_cluster_name,
    fabric_netns_name,
    mount_setup_script,
    node_full_exec_prefix,
    node_mount_exec_prefix,
    node_name,
    plan_cluster,
    render_hosts,
    render_libvirtd_conf,
    render_qemu_conf,
    render_virtlogd_conf,
)

__all__ = [
    "DEFAULT_BASE_DIR",
    "FABRIC_BRIDGE",
    "FABRIC_GATEWAY",
    "FABRIC_NETWORK",
    "FIRST_GUEST_ADDRESS",
    "FIRST_NODE_HOST",
    "LIBVIRT_TCP_PORT",
    "MAX_NODES",
    "NODE_BRIDGE",
    "NODE_MANAGEMENT",
    "NODE_MOUNTS",
    "NODE_UPLINK",
    "ClusterPlan",
    "NodePlan",
    "NodesError",
    "SimNode",
    "check_cluster_name",
    "create_cluster_nodes",
    "destroy_cluster_nodes",
    "fabric_netns_name",
    "load_cluster_nodes",
    "main",
    "mount_setup_script",
    "node_full_exec_prefix",
    "node_mount_exec_prefix",
    "node_name",
    "node_status",
    "plan_cluster",
    "render_hosts",
    "render_libvirtd_conf",
    "render_qemu_conf",
    "render_virtlogd_conf",
]


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
