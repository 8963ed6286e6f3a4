"""Realize a planned VRF on a node through netlink, level-based and idempotent.

Two backends, chosen per VRF by the planner:

- ``netns``: one network namespace per VRF (``<prefix><name>``). Segment members are veth
  pairs from the node's segment bridge into the namespace; host interfaces are moved in
  (and back out on removal). Routes go into the VRF's table inside the namespace, with a
  policy rule (priority 1000, like the kernel's l3mdev rule) sending every lookup there,
  so "the right table" means the same thing in both backends. Nothing can route between
  two namespaces: there is no shared FIB.
- ``vrf``: an l3mdev device (``kind=vrf``) in the node namespace bound to the table;
  members are enslaved to it; the kernel adds the l3mdev rule itself.

Every pass compares what the kernel holds with the plan and fixes the difference, so a
route or link deleted by hand comes back on the next `VRFRealizer.apply`. Ownership marks
live in the kernel (interface aliases, a route protocol), not in memory, so a restarted
agent finds and removes what it made.

Names and ownership aliases are :mod:`kubevisor.agent.kernel.vrfnaming`; the routes to
install and when a read-back counts as realized are :mod:`kubevisor.agent.kernel.vrfconverging`.

All pyroute2 work runs on one worker thread (blocking netlink calls stay off the event
loop; one thread keeps namespace switching simple).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from kubevisor.agent.kernel import cgroups, linking, netnsthreads, routes, vrfconverging, vrfnaming
from kubevisor.agent.vrfs import planning, specs
from kubevisor.api.conditions import Reason

IFF_UP = 0x1

T = TypeVar("T")


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _segment_bridge(node: IPRoute, iface: planning.DesiredInterface) -> int:
    """Index of the node bridge a segment member plugs into; SegmentMissing when absent."""
    bridge = linking.lookup(node, str(iface.bridge))
    if bridge is None:
        raise vrfconverging.RealizeError(
            Reason.SEGMENT_MISSING,
            f"bridge {iface.bridge!r} for interface {iface.name!r} is not on this node.",
        )
    return bridge


class VRFRealizer:
    """Apply, observe and remove VRFs on one node (``node_netns=None``: this namespace).

    ``netns_prefix`` names the per-VRF namespaces (default ``kvvrf-``, or
    ``<node_netns>-vrf-`` for a simulated node, so two simulated nodes on one machine never
    collide); ``cgroup_parent`` is the cgroup directory holding the VRFs' contexts;
    ``run_root`` holds their routing daemons' run directories (``Naming.run_dir``).
    """

    def __init__(
        self,
        *,
        node_netns: str | None = None,
        netns_prefix: str | None = None,
        cgroup_parent: str | None = None,
        cgroup_root: Path = cgroups.CGROUP_ROOT,
        run_root: str = "/run/kubevisor",
    ) -> None:
        if netns_prefix is None:
            netns_prefix = "kvvrf-" if node_netns is None else f"{node_netns}-vrf-"
        if cgroup_parent is None:
            cgroup_parent = "kubevisor-vrf" if node_netns is None else f"kubevisor-{node_netns}"
        self.naming = vrfnaming.Naming(node_netns, netns_prefix, cgroup_parent, run_root)
        self._cgroup_root = cgroup_root
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-netlink")

    # -- async surface ------------------------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def apply(self, desired: planning.DesiredVRF) -> specs.NodeVRFStatus:
        """Make the node hold ``desired``; returns the status read back from the kernel."""
        return await self._run(self.apply_sync, desired)

    async def remove(self, name: str) -> None:
        """Remove everything of VRF ``name`` from the node; a no-op when nothing is left."""
        await self._run(self.remove_sync, name)

    async def observe(self) -> dict[str, specs.NodeVRFStatus]:
        """Status of every VRF this realizer finds on the node, by name."""
        return await self._run(self.observe_sync)

    async def launch(
        self, name: str, argv: Sequence[str], *, cwd: Path | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process in the VRF's context (its namespace and cgroup), in its own
        session (an agent restart leaves it running); ``log`` takes its stdout/stderr."""
        return await self._run(lambda: self.launch_sync(name, argv, cwd=cwd, log=log))

    def oom_kills(self, name: str) -> int:
        """Processes the kernel killed in the VRF's cgroup over its memory limit (blocking:
        call it in a thread; `CgroupContext.oom_kills`)."""
        return self._cgroup(name).oom_kills()

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=True)

    # -- apply --------------------------------------------------------------------------

    def apply_sync(self, desired: planning.DesiredVRF) -> specs.NodeVRFStatus:
        """`apply`, on the calling thread."""
        try:
            context = self._cgroup(desired.name)
            if context.version != "none":
                context.ensure(desired.limits)
            if desired.backend == "netns":
                installed, observed = self._apply_netns(desired)
            else:
                installed = self._apply_vrf(desired)
                observed = self._observe_one(desired.name, desired.backend)
        except vrfconverging.RealizeError as error:
            return vrfconverging.failed(desired, reason=error.reason, message=error.message)
        except (NetlinkError, OSError) as error:
            return vrfconverging.failed(desired, reason=Reason.KERNEL_ERROR, message=str(error))
        return vrfconverging.converged(desired, observed, installed=installed)

    def _node(self) -> IPRoute:
        return netnsthreads.iproute(self.naming.node_netns)

    def _apply_netns(self, desired: planning.DesiredVRF) -> tuple[int, specs.NodeVRFStatus]:
        """Realize a netns-backend VRF and read it back, through one node socket, one
        socket in the VRF's namespace and one raw route socket there (each opened without
        a fork: ``netnsthreads``)."""
        ns = self.naming.vrf_netns(desired.name)
        if ns not in netns.listnetns():
            netnsthreads.create(ns)
        with (
            self._node() as node,
            netnsthreads.iproute(ns) as ctx,
            routes.RouteSocket(ns) as sock,
        ):
            lo = ctx.link_lookup(ifname="lo")[0]
            ctx.link("set", index=lo, state="up")
            linking.set_forwarding(ns)
            wanted = {i.name: i for i in desired.interfaces}
            for link in ctx.get_links():
                ifname = _attr(link, "IFLA_IFNAME")
                if ifname != "lo" and not self._member_ok(link, wanted.get(ifname), desired.name):
                    self._release_netns(node, ctx, link)
            for iface in desired.interfaces:
                index = self._ensure_member_netns(node, ctx, ns, desired.name, iface)
                linking.ensure_addresses(ctx, index, iface.addresses)
            linking.ensure_rules(ctx, desired.table)
            oifs = {_attr(link, "IFLA_IFNAME"): link["index"] for link in ctx.get_links()}
            kernel_routes = vrfconverging.kernel_routes(desired, lambda dev: oifs.get(dev))
            installed = routes.sync_routes(sock, desired.table, kernel_routes, whole_namespace=True)
            return installed, self._observe_netns(desired.name, ctx, sock)

    def _member_ok(self, link: Any, iface: planning.DesiredInterface | None, vrf: str) -> bool:
        """Whether a link in the VRF namespace is the member the plan wants by that name."""
        if iface is None:
            return False
        alias = _attr(link, "IFLA_IFALIAS") or ""
        if iface.bridge is not None:
            return bool(alias == vrfnaming.segment_alias(vrf, iface.name))
        return bool(alias == vrfnaming.host_alias(str(iface.host_interface)))

    def _ensure_member_netns(
        self,
        node: IPRoute,
        ctx: IPRoute,
        ns: str,
        vrf: str,
        iface: planning.DesiredInterface,
    ) -> int:
        found = ctx.link_lookup(ifname=iface.name)
        if iface.bridge is not None:
            bridge = _segment_bridge(node, iface)
            if not found:
                return self._add_member_netns(node, ctx, ns, vrf, iface, bridge)
            index = int(found[0])
            link = ctx.get_links(index)[0]
            if _attr(link, "IFLA_ADDRESS") != iface.mac:
                ctx.link("set", index=index, address=iface.mac)
            self._ensure_node_side(node, vrf, iface.name, bridge)
        else:
            host = str(iface.host_interface)
            if not found:
                moved = linking.lookup(node, host)
                if moved is None:
                    raise vrfconverging.RealizeError(
                        "HostInterfaceMissing",
                        f"host interface {host!r} for {iface.name!r} is not on this node.",
                    )
                node.link("set", index=moved, state="down")
                node.link("set", index=moved, net_ns_fd=ns)
                index = int(ctx.link_lookup(ifname=host)[0])
                ctx.link("set", index=index, ifname=iface.name, ifalias=vrfnaming.host_alias(host))
                found = [index]
            index = int(found[0])
        link = ctx.get_links(index)[0]
        if not link["flags"] & IFF_UP:
            ctx.link("set", index=index, state="up")
        return index

    def _add_member_netns(
        self,
        node: IPRoute,
        ctx: IPRoute,
        ns: str,
        vrf: str,
        iface: planning.DesiredInterface,
        bridge: int,
    ) -> int:
        """A new segment member: the veth made with its MAC, on the bridge and up in one
        request, then the two aliases (the kernel takes none at creation): five requests
        where checking each attribute of a fresh link took eleven."""
        node_side = self.naming.node_ifname(vrf, iface.name)
        stale = linking.lookup(node, node_side)
        if stale is not None:
            node.link("del", index=stale)
        node.link(
            "add",
            ifname=node_side,
            kind="veth",
            master=bridge,
            state="up",
            peer={"ifname": iface.name, "net_ns_fd": ns, "address": iface.mac},
        )
        index = int(ctx.link_lookup(ifname=iface.name)[0])
        ctx.link("set", index=index, ifalias=vrfnaming.segment_alias(vrf, iface.name), state="up")
        made = linking.lookup(node, node_side)
        if made is None:
            raise vrfconverging.RealizeError(
                "SegmentBroken", f"node side {node_side!r} of {iface.name!r} vanished."
            )
        node.link("set", index=made, ifalias=vrfnaming.node_side_alias(vrf, iface.name))
        return index

    def _ensure_node_side(self, node: IPRoute, vrf: str, iface: str, bridge: int) -> None:
        node_side = self.naming.node_ifname(vrf, iface)
        index = linking.lookup(node, node_side)
        if index is None:
            raise vrfconverging.RealizeError(
                "SegmentBroken", f"node side {node_side!r} of {iface!r} vanished."
            )
        link = node.get_links(index)[0]
        changes: dict[str, Any] = {}
        if _attr(link, "IFLA_MASTER") != bridge:
            changes["master"] = bridge
        if _attr(link, "IFLA_IFALIAS") != vrfnaming.node_side_alias(vrf, iface):
            changes["ifalias"] = vrfnaming.node_side_alias(vrf, iface)
        if changes:
            node.link("set", index=index, **changes)
        if not link["flags"] & IFF_UP:
            node.link("set", index=index, state="up")

    def _release_netns(self, node: IPRoute, ctx: IPRoute, link: Any) -> None:
        """Give a host interface back to the node; delete anything else (veths)."""
        index = link["index"]
        alias = _attr(link, "IFLA_IFALIAS") or ""
        if alias.startswith(vrfnaming.ALIAS_HOST):
            original = alias[len(vrfnaming.ALIAS_HOST) :]
            ctx.link("set", index=index, state="down")
            ctx.link("set", index=index, ifname=original, ifalias="")
            target: dict[str, Any] = (
                {"net_ns_fd": self.naming.node_netns}
                if self.naming.node_netns
                else {"net_ns_pid": os.getpid()}
            )
            ctx.link("set", index=index, **target)
            return
        try:
            ctx.link("del", index=index)
        except NetlinkError:
            ctx.link("set", index=index, state="down")

    def _apply_vrf(self, desired: planning.DesiredVRF) -> int:
        device = self.naming.vrf_device(desired.name)
        with self._node() as node:
            index = linking.lookup(node, device)
            if index is not None and linking.vrf_table(node.get_links(index)[0]) != desired.table:
                old = linking.vrf_table(node.get_links(index)[0])
                with routes.RouteSocket(self.naming.node_netns) as sock:
                    sock.apply(delete=sock.dump(table=old, protocol=routes.PROTO_KUBEVISOR))
                node.link("del", index=index)
                index = None
            if index is None:
                node.link("add", ifname=device, kind="vrf", vrf_table=desired.table)
                index = linking.lookup(node, device)
                if index is None:
                    raise vrfconverging.RealizeError(
                        "VRFDeviceMissing", f"VRF device {device!r} vanished."
                    )
                node.link("set", index=index, ifalias=f"{vrfnaming.ALIAS_VRF}{desired.name}")
            node.link("set", index=index, state="up")
            wanted = {(i.host_interface or i.name): i for i in desired.interfaces}
            for link in node.get_links():
                if _attr(link, "IFLA_MASTER") != index:
                    continue
                iface = wanted.get(_attr(link, "IFLA_IFNAME"))
                alias = _attr(link, "IFLA_IFALIAS") or ""
                ok = iface is not None and (
                    iface.bridge is None
                    or alias == vrfnaming.segment_alias(desired.name, iface.name)
                )
                if not ok:
                    if alias.startswith(vrfnaming.ALIAS_SEGMENT):
                        node.link("del", index=link["index"])
                    else:
                        node.link("set", index=link["index"], master=0, ifalias="")
            for iface in desired.interfaces:
                member = self._ensure_member_vrf(node, index, desired.name, iface)
                linking.ensure_addresses(node, member, iface.addresses)
            oifs = {_attr(link, "IFLA_IFNAME"): link["index"] for link in node.get_links()}
        names = {i.name: (i.host_interface or i.name) for i in desired.interfaces}
        kernel_routes = vrfconverging.kernel_routes(
            desired, lambda dev: oifs.get(names.get(dev, dev))
        )
        with routes.RouteSocket(self.naming.node_netns) as sock:
            return routes.sync_routes(sock, desired.table, kernel_routes, whole_namespace=False)

    def _ensure_member_vrf(
        self, node: IPRoute, vrf_index: int, vrf: str, iface: planning.DesiredInterface
    ) -> int:
        if iface.bridge is not None:
            bridge = _segment_bridge(node, iface)
            alias = vrfnaming.segment_alias(vrf, iface.name)
            index = linking.lookup(node, iface.name)
            if index is not None and _attr(node.get_links(index)[0], "IFLA_IFALIAS") != alias:
                raise vrfconverging.RealizeError(
                    "InterfaceNameTaken",
                    f"interface name {iface.name!r} is already used on this node.",
                )
            if index is None:
                node_side = self.naming.node_ifname(vrf, iface.name)
                stale = linking.lookup(node, node_side)
                if stale is not None:
                    node.link("del", index=stale)
                node.link("add", ifname=node_side, kind="veth", peer={"ifname": iface.name})
                index = linking.lookup(node, iface.name)
                node.link("set", index=index, address=iface.mac, ifalias=alias)
            self._ensure_node_side(node, vrf, iface.name, bridge)
        else:
            index = linking.lookup(node, str(iface.host_interface))
            if index is None:
                raise vrfconverging.RealizeError(
                    "HostInterfaceMissing",
                    f"host interface {iface.host_interface!r} is not on this node.",
                )
        assert index is not None
        link = node.get_links(index)[0]
        if _attr(link, "IFLA_MASTER") != vrf_index:
            node.link("set", index=index, master=vrf_index)
        node.link("set", index=index, state="up")
        return index

    # -- observe ------------------------------------------------------------------------

    def observe_sync(self) -> dict[str, specs.NodeVRFStatus]:
        """`observe`, on the calling thread."""
        found: dict[str, specs.NodeVRFStatus] = {}
        for ns in sorted(netns.listnetns()):
            if ns.startswith(self.naming.netns_prefix):
                name = ns[len(self.naming.netns_prefix) :]
                found[name] = self._observe_one(name, "netns")
        with self._node() as node:
            for link in node.get_links():
                alias = _attr(link, "IFLA_IFALIAS") or ""
                if alias.startswith(vrfnaming.ALIAS_VRF):
                    name = alias[len(vrfnaming.ALIAS_VRF) :]
                    found[name] = self._observe_one(name, "vrf")
        return found

    def _observe_one(self, name: str, backend: str) -> specs.NodeVRFStatus:
        table = 0
        interfaces: list[str] = []
        if backend == "netns":
            ns = self.naming.vrf_netns(name)
            with netnsthreads.iproute(ns) as ctx, routes.RouteSocket(ns) as sock:
                return self._observe_netns(name, ctx, sock)
        else:
            with self._node() as node:
                index = linking.lookup(node, self.naming.vrf_device(name))
                if index is not None:
                    table = linking.vrf_table(node.get_links(index)[0])
                    interfaces = sorted(
                        _attr(link, "IFLA_IFNAME")
                        for link in node.get_links()
                        if _attr(link, "IFLA_MASTER") == index
                    )
            with routes.RouteSocket(self.naming.node_netns) as sock:
                installed = len(sock.dump(table=table, protocol=routes.PROTO_KUBEVISOR))
        return self._observed(name, backend, table, interfaces, installed)

    def _observe_netns(
        self, name: str, ctx: IPRoute, sock: routes.RouteSocket
    ) -> specs.NodeVRFStatus:
        interfaces = sorted(
            _attr(link, "IFLA_IFNAME")
            for link in ctx.get_links()
            if _attr(link, "IFLA_IFNAME") != "lo"
        )
        table = 0
        for rule in ctx.get_rules(family=socket.AF_INET):
            if rule.get("priority") == linking.RULE_PRIORITY:
                table = int(rule.get("table"))
        installed = len(sock.dump(protocol=routes.PROTO_KUBEVISOR))
        return self._observed(name, "netns", table, interfaces, installed)

    def _observed(
        self, name: str, backend: str, table: int, interfaces: list[str], installed: int
    ) -> specs.NodeVRFStatus:
        status: specs.NodeVRFStatus = {
            "backend": backend,
            "table": table,
            "interfaces": interfaces,
            "routesInstalled": installed,
            "ready": True,
            "reason": None,
            "message": "observed",
        }
        context = self._cgroup(name)
        if context.exists():
            status["usage"] = context.usage()
        return status

    # -- remove -------------------------------------------------------------------------

    def remove_sync(self, name: str) -> None:
        """`remove`, on the calling thread."""
        self._cgroup(name).remove()
        ns = self.naming.vrf_netns(name)
        with self._node() as node:
            if ns in netns.listnetns():
                with netnsthreads.iproute(ns) as ctx:
                    for link in ctx.get_links():
                        if _attr(link, "IFLA_IFNAME") != "lo":
                            self._release_netns(node, ctx, link)
                netns.remove(ns)
            device = linking.lookup(node, self.naming.vrf_device(name))
            if device is not None:
                table = linking.vrf_table(node.get_links(device)[0])
                for link in node.get_links():
                    if _attr(link, "IFLA_MASTER") != device:
                        continue
                    if (_attr(link, "IFLA_IFALIAS") or "").startswith(vrfnaming.ALIAS_SEGMENT):
                        node.link("del", index=link["index"])
                    else:
                        node.link("set", index=link["index"], master=0, ifalias="")
                with routes.RouteSocket(self.naming.node_netns) as sock:
                    sock.apply(delete=sock.dump(table=table, protocol=routes.PROTO_KUBEVISOR))
                node.link("del", index=device)
            # node-side veth ends whose peer went away with a namespace still linger
            # until the namespace is freed; remove them now so nothing is left behind.
            for link in node.get_links():
                alias = _attr(link, "IFLA_IFALIAS") or ""
                if alias.startswith(vrfnaming.node_side_alias(name, "")):
                    try:
                        node.link("del", index=link["index"])
                    except NetlinkError:
                        pass

    # -- processes in the context -------------------------------------------------------

    def _cgroup(self, name: str) -> cgroups.CgroupContext:
        return cgroups.CgroupContext(name, parent=self.naming.cgroup_parent, root=self._cgroup_root)

    def launch_sync(
        self, name: str, argv: Sequence[str], *, cwd: Path | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`launch`, on the calling thread."""
        ns = self.naming.vrf_netns(name)
        target = ns if ns in netns.listnetns() else self.naming.node_netns
        context = self._cgroup(name)
        procs = context.procs_files() if context.exists() else []

        def enter() -> None:
            # In the child before exec: join the cgroup first, so everything the program
            # allocates is charged to the VRF, then its namespace.
            for path in procs:
                with open(path, "w") as handle:
                    handle.write(str(os.getpid()))
            if target is not None:
                netns.setns(target, flags=0)

        output = open(log, "ab") if log is not None else None
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output if output is not None else subprocess.DEVNULL,
                stderr=output if output is not None else subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=enter,  # setns must happen between fork and exec
            )
        finally:
            if output is not None:
                output.close()
        return process
