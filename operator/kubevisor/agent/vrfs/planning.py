"""Pure decisions for VRFs on one node: from accepted VRFs to the state the node holds.

The agent decides nothing the controller decides: the spec is parsed with the API model
(``kubevisor.api.vrfs``, the same rules as the CRD), conflicts and tables are settled by
the controller (``controller/vrfs/planning.py``) and arrive as the table to use. What is
left is what only this node can judge: whether its kernel can build the VRF (l3mdev,
802.1Q), and the plan itself. The agent calls, for the VRFs assigned to its node::

    result = planning.plan_node(assigned, bridge_for=..., kernel_has_vrf=...)

A refused VRF gets a `Problem` (reason + sentence) for its node entry; it is never
realized half-way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubevisor.api import quantities, vrfs
from kubevisor.api.conditions import Reason

CFS_PERIOD_US = 100_000
#: The smallest CFS quota the kernel takes (1 ms per period).
CFS_MIN_QUOTA_US = 1000


@dataclass(frozen=True)
class Problem:
    """Why a VRF is refused on this node: a CamelCase reason and a sentence for users."""

    reason: str
    message: str


class SpecError(ValueError):
    """A VRF this node cannot build; carries the `Problem` for its node entry."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass(frozen=True)
class DesiredInterface:
    """A member interface as the VRF context should see it.

    Exactly one of ``bridge`` (a segment: plug a veth into this node bridge) and
    ``host_interface`` (take over this existing node interface) is set. ``mac`` is derived
    from the VRF and interface names, so the same VRF on every node answers with the same
    gateway MAC (an anycast gateway) and hosts keep working when they move between nodes.
    """

    name: str
    addresses: tuple[str, ...]
    mac: str
    bridge: str | None = None
    host_interface: str | None = None


@dataclass(frozen=True)
class DesiredRoute:
    """A static route in the VRF's table; ``(prefix, metric)`` is its identity there."""

    prefix: str
    type: vrfs.RouteType = "unicast"
    via: str | None = None
    device: str | None = None
    metric: int = 0

    @property
    def family(self) -> int:
        """4 or 6, from the prefix."""
        return ipaddress.ip_network(self.prefix).version


@dataclass(frozen=True)
class Limits:
    """cgroup limits of the VRF's context; ``None`` means unlimited."""

    cpu_quota_us: int | None = None
    cpu_period_us: int = CFS_PERIOD_US
    memory_bytes: int | None = None


@dataclass(frozen=True)
class DesiredVRF:
    """Everything one node must hold for one VRF."""

    name: str
    table: int
    backend: vrfs.RealBackend
    interfaces: tuple[DesiredInterface, ...] = ()
    routes: tuple[DesiredRoute, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Assigned:
    """A VRF the controller accepted for this node: its parsed spec and its table."""

    spec: vrfs.VRFSpec
    table: int


def limits_from(resources: vrfs.VRFResources | None) -> Limits:
    """cgroup limits from validated resources (CFS quota over the default period, at
    least the kernel's 1 ms; memory in bytes), with `kubevisor.api.quantities`."""
    if resources is None:
        return Limits()
    quota = None
    if resources.cpu is not None:
        cores = quantities.parse(resources.cpu)
        quota = max(CFS_MIN_QUOTA_US, math.ceil(cores * CFS_PERIOD_US))
    memory = quantities.to_bytes(resources.memory) if resources.memory is not None else None
    return Limits(cpu_quota_us=quota, memory_bytes=memory)


def interface_mac(vrf: str, interface: str) -> str:
    """Locally administered unicast MAC, the same for this VRF interface on every node."""
    digest = hashlib.sha256(f"{vrf}/{interface}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def choose_backend(requested: vrfs.Backend, *, kernel_has_vrf: bool) -> vrfs.RealBackend:
    """The backend this node uses: l3mdev where asked and available, else a netns."""
    if requested == "vrf" and not kernel_has_vrf:
        raise SpecError(
            Problem(
                Reason.BACKEND_UNAVAILABLE,
                "backend vrf was requested but this node's kernel has no l3mdev VRF support.",
            )
        )
    if requested == "netns":
        return "netns"
    return "vrf" if kernel_has_vrf else "netns"


def check_node_support(spec: vrfs.VRFSpec, *, kernel_has_8021q: bool) -> None:
    """Refuse what this node's kernel cannot build, with a sentence saying so.

    A VLAN member needs an 802.1Q sub-interface of the network's bridge; a kernel without
    802.1Q would silently leave the VRF on the untagged segment (a leak), so refuse.
    """
    if kernel_has_8021q:
        return
    for iface in spec.interfaces:
        if iface.vlan is not None:
            raise SpecError(
                Problem(
                    Reason.BACKEND_UNAVAILABLE,
                    f"interface {iface.name!r} wants VLAN {iface.vlan} on network "
                    f"{iface.network!r}: 802.1Q not available in this kernel.",
                )
            )


def plan(
    name: str,
    spec: vrfs.VRFSpec,
    *,
    table: int,
    bridge_for: Callable[[str, int | None], str],
    kernel_has_vrf: bool,
) -> DesiredVRF:
    """The node state for one validated VRF. ``bridge_for(network, vlan)`` names the
    segment bridge; ``table`` is the one the controller assigned."""
    interfaces = tuple(
        DesiredInterface(
            name=iface.name,
            addresses=tuple(str(ipaddress.ip_interface(a)) for a in iface.addresses),
            mac=interface_mac(name, iface.name),
            bridge=bridge_for(iface.network, iface.vlan) if iface.network is not None else None,
            host_interface=iface.host_interface,
        )
        for iface in spec.interfaces
    )
    routes = tuple(
        DesiredRoute(
            prefix=str(ipaddress.ip_network(r.prefix)),
            type=r.type,
            via=str(ipaddress.ip_address(r.via)) if r.via is not None else None,
            device=r.device,
            metric=r.metric,
        )
        for r in spec.routes
    )
    return DesiredVRF(
        name=name,
        table=table,
        backend=choose_backend(spec.backend, kernel_has_vrf=kernel_has_vrf),
        interfaces=interfaces,
        routes=routes,
        limits=limits_from(spec.resources),
    )


#: Routing daemons this agent runs in a VRF's context when their programs are on the node
#: (the agent probes which are: `supervising.installed`).
RUNNABLE_DAEMONS: frozenset[str] = frozenset({"bird", "frr"})
#: What each daemon needs on the node, as the DaemonUnavailable message says it.
NEEDS: dict[str, str] = {
    "bird": "BIRD 2 (bird and birdc)",
    "frr": "FRR (zebra, staticd, bgpd, ospfd and vtysh from frr; frr-reload from frr-pythontools)",
}


def daemon_problem(
    spec: vrfs.VRFSpec,
    *,
    installed: frozenset[str] = frozenset(),
    backend: vrfs.RealBackend = "netns",
) -> Problem | None:
    """Why the VRF's ``routing.daemon`` cannot run on this node, or None.

    ``installed``: the daemons whose programs this node has; ``backend``: the one the VRF
    is realized with here (BIRD runs on both, on l3mdev only from the typed spec, which
    binds it to the VRF's device; FRR in a VRF's own namespace only). The kernel
    part of the VRF is still realized, but a VRF whose daemon (and so its config) is not
    applied must not report Ready: the node entry says DaemonUnavailable.
    """
    daemon = spec.routing.daemon if spec.routing is not None else "none"
    if daemon == "none":
        return None
    unapplied = "its config is not applied (the VRF's interfaces and static routes are)."
    if daemon not in RUNNABLE_DAEMONS:
        return Problem(
            Reason.DAEMON_UNAVAILABLE,
            f"routing.daemon {daemon!r} is not run by this agent; {unapplied}",
        )
    if daemon not in installed:
        return Problem(
            Reason.DAEMON_UNAVAILABLE,
            f"routing.daemon {daemon!r} needs {NEEDS[daemon]}, which is not installed"
            f" on this node; {unapplied}",
        )
    if backend != "netns" and daemon == "frr":
        return Problem(
            Reason.DAEMON_UNAVAILABLE,
            "routing.daemon 'frr' runs in a VRF's network namespace only: on the l3mdev"
            " backend every VRF's zebra would share the node's namespace, and each zebra"
            " removes, when it starts, the routes other zebras installed (set backend:"
            f" netns, or use bird); {unapplied}",
        )
    if backend != "netns" and spec.routing is not None and not spec.routing.typed:
        return Problem(
            Reason.DAEMON_UNAVAILABLE,
            "routing.daemon 'bird' on the l3mdev backend shares the node's network"
            " namespace, so the agent runs only the typed routing spec there (it binds every"
            " protocol to the VRF's device); a routing.config of its own could reach the"
            f" node's own tables (use the typed spec, or set backend: netns); {unapplied}",
        )
    return None


@dataclass(frozen=True)
class NodePlan:
    """What one node should hold: VRFs to realize and VRFs this node cannot build."""

    desired: dict[str, DesiredVRF]
    refused: dict[str, Problem]


def plan_node(
    assigned: Mapping[str, Assigned],
    *,
    bridge_for: Callable[[str, int | None], str],
    kernel_has_vrf: bool,
    kernel_has_8021q: bool = True,
) -> NodePlan:
    """Plan every VRF assigned to this node in one pure step.

    Refused VRFs (the node's kernel cannot build them) are not realized at all.
    """
    desired: dict[str, DesiredVRF] = {}
    refused: dict[str, Problem] = {}
    for name, item in assigned.items():
        try:
            check_node_support(item.spec, kernel_has_8021q=kernel_has_8021q)
            desired[name] = plan(
                name,
                item.spec,
                table=item.table,
                bridge_for=bridge_for,
                kernel_has_vrf=kernel_has_vrf,
            )
        except SpecError as error:
            refused[name] = error.problem
    return NodePlan(desired=desired, refused=refused)
