"""Pure decisions for VRFs on one node: validation, conflicts, table allocation, the plan.

Everything is a function of plain data so it can be table-tested without a kernel. The
agent calls, for the VRFs selected onto its node::

    problems = planning.find_conflicts(specs, current=realized_tables)
    tables = planning.allocate_tables(ok_specs, current=realized_tables)
    desired = planning.plan(name, spec, table=tables[name], bridge_for=..., kernel_has_vrf=...)

A refused VRF gets a `Problem` (reason + sentence) for its status condition; it is never
realized half-way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kubevisor.agent.vrfs import specs

#: Kernel table ids a VRF may not take: unspec, compat, default, main, local.
RESERVED_TABLES = frozenset({0, 252, 253, 254, 255})
#: Where automatic allocation starts and ends (inclusive); explicit tables may be anywhere.
AUTO_TABLE_FIRST = 1000
AUTO_TABLE_LAST = 1999
MAX_TABLE = 2**32 - 1
IFNAMSIZ = 15
CFS_PERIOD_US = 100_000

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MEMORY_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


@dataclass(frozen=True)
class Problem:
    """Why a VRF is refused on this node: a CamelCase reason and a sentence for users."""

    reason: str
    message: str


class SpecError(ValueError):
    """A spec that cannot be planned; carries the `Problem` for the status condition."""

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
    type: specs.RouteType = "unicast"
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
    backend: specs.RealBackend
    interfaces: tuple[DesiredInterface, ...] = ()
    routes: tuple[DesiredRoute, ...] = ()
    limits: Limits = field(default_factory=Limits)


# -- quantities -------------------------------------------------------------------------


def parse_cpu(quantity: str) -> float:
    """CPU quantity ("500m", "2", "0.25") to cores."""
    text = str(quantity).strip()
    try:
        if text.endswith("m"):
            value = float(text[:-1]) / 1000
        else:
            value = float(text)
    except ValueError:
        raise SpecError(
            Problem("InvalidSpec", f"resources.cpu {quantity!r} is not a CPU quantity.")
        ) from None
    if value <= 0:
        raise SpecError(Problem("InvalidSpec", f"resources.cpu {quantity!r} must be positive."))
    return value


def parse_memory(quantity: str) -> int:
    """Memory quantity ("64Mi", "1G", "1048576") to bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(k|Ki|M|Mi|G|Gi|T|Ti)?", str(quantity).strip())
    if not match:
        raise SpecError(
            Problem("InvalidSpec", f"resources.memory {quantity!r} is not a memory quantity.")
        )
    value = int(float(match.group(1)) * _MEMORY_SUFFIX[match.group(2) or ""])
    if value <= 0:
        raise SpecError(Problem("InvalidSpec", f"resources.memory {quantity!r} must be positive."))
    return value


def limits_from(resources: specs.ResourcesSpec | None) -> Limits:
    """cgroup limits from the spec's resources (CFS quota over the default period)."""
    resources = resources or {}
    quota = None
    if "cpu" in resources:
        quota = max(1000, round(parse_cpu(resources["cpu"]) * CFS_PERIOD_US))
    memory = parse_memory(resources["memory"]) if "memory" in resources else None
    return Limits(cpu_quota_us=quota, memory_bytes=memory)


# -- validation -------------------------------------------------------------------------


def interface_mac(vrf: str, interface: str) -> str:
    """Locally administered unicast MAC, the same for this VRF interface on every node."""
    digest = hashlib.sha256(f"{vrf}/{interface}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def validate(name: str, spec: specs.VRFSpec) -> Problem | None:
    """First problem of a single spec (no other VRFs considered), or None."""
    try:
        _check(name, spec)
    except SpecError as error:
        return error.problem
    return None


def _invalid(message: str) -> SpecError:
    return SpecError(Problem("InvalidSpec", message))


def _check(name: str, spec: specs.VRFSpec) -> None:
    table = spec.get("table")
    if table is not None and (table in RESERVED_TABLES or not 0 < table <= MAX_TABLE):
        raise _invalid(
            f"table {table} is reserved or out of range; use 1..{MAX_TABLE} except "
            f"{sorted(RESERVED_TABLES)}."
        )
    names: set[str] = set()
    for iface in spec.get("interfaces", []):
        ifname = iface.get("name", "")
        if not _IFNAME.match(ifname) or ifname == "lo":
            raise _invalid(
                f"interface name {ifname!r} must be 1..{IFNAMSIZ} characters of letters, "
                "digits, '_', '.', '-' and not 'lo'."
            )
        if ifname in names:
            raise _invalid(f"interface {ifname!r} is listed twice.")
        names.add(ifname)
        if ("network" in iface) == ("hostInterface" in iface):
            raise _invalid(f"interface {ifname!r} needs exactly one of network or hostInterface.")
        if "vlan" in iface and not 1 <= iface["vlan"] <= 4094:
            raise _invalid(f"interface {ifname!r}: vlan {iface['vlan']} is not in 1..4094.")
        for address in iface.get("addresses", []):
            try:
                if "/" not in address:
                    raise ValueError(address)
                ipaddress.ip_interface(address)
            except ValueError:
                raise _invalid(
                    f"interface {ifname!r}: {address!r} is not an address with a prefix length."
                ) from None
    for route in spec.get("routes", []):
        _check_route(route, names)
    limits_from(spec.get("resources"))
    backend = spec.get("backend", "auto")
    if backend not in ("auto", "vrf", "netns"):
        raise _invalid(f"backend {backend!r} is not one of auto, vrf, netns.")


def _check_route(route: specs.RouteSpec, names: set[str]) -> None:
    prefix = route.get("prefix", "")
    try:
        network = ipaddress.ip_network(prefix)
    except ValueError:
        raise _invalid(
            f"route prefix {prefix!r} is not a network (host bits must be zero)."
        ) from None
    kind = route.get("type", "unicast")
    if kind not in ("unicast", "blackhole", "unreachable", "prohibit"):
        raise _invalid(f"route {prefix}: type {kind!r} is unknown.")
    via, device = route.get("via"), route.get("device")
    if kind == "unicast" and via is None and device is None:
        raise _invalid(f"route {prefix}: a unicast route needs via or device.")
    if kind != "unicast" and (via is not None or device is not None):
        raise _invalid(f"route {prefix}: a {kind} route takes no via or device.")
    if via is not None:
        try:
            gateway = ipaddress.ip_address(via)
        except ValueError:
            raise _invalid(f"route {prefix}: via {via!r} is not an address.") from None
        if gateway.version != network.version:
            raise _invalid(f"route {prefix}: via {via} is of another address family.")
    if device is not None and device not in names:
        raise _invalid(f"route {prefix}: device {device!r} is not one of the VRF's interfaces.")
    metric = route.get("metric", 0)
    if not 0 <= metric <= MAX_TABLE:
        raise _invalid(f"route {prefix}: metric {metric} is out of range.")


# -- conflicts and tables ---------------------------------------------------------------


def _order(names: Iterable[str], current: Mapping[str, int]) -> list[str]:
    """VRFs already realized keep what they hold; newcomers queue by name."""
    return sorted(names, key=lambda n: (n not in current, n))


def _claims(spec: specs.VRFSpec) -> list[tuple[str, str]]:
    """What a VRF takes exclusively on a node: host interfaces and segments."""
    claims = []
    for iface in spec.get("interfaces", []):
        if "hostInterface" in iface:
            claims.append(("host interface", iface["hostInterface"]))
        elif "network" in iface:
            vlan = iface.get("vlan")
            segment = iface["network"] if vlan is None else f"{iface['network']}/vlan {vlan}"
            claims.append(("segment", segment))
    return claims


def find_conflicts(
    vrfs: Mapping[str, specs.VRFSpec], *, current: Mapping[str, int] | None = None
) -> dict[str, Problem]:
    """Problems of the VRFs placed on one node, keyed by VRF name.

    Refuses invalid specs, a table another VRF already has (``TableConflict``), and an
    interface or segment another VRF already claims (``InterfaceConflict``: two VRFs on one
    L2 segment would leak between them). The VRF that holds the resource now (``current``:
    name -> realized table) keeps it; among newcomers the first by name wins.
    """
    current = current or {}
    problems: dict[str, Problem] = {}
    tables: dict[int, str] = {}
    claims: dict[tuple[str, str], str] = {}
    for name in _order(vrfs, current):
        spec = vrfs[name]
        problem = validate(name, spec)
        if problem is not None:
            problems[name] = problem
            continue
        table = spec.get("table")
        if table is not None and table in tables:
            problems[name] = Problem(
                "TableConflict", f"table {table} is already used by VRF {tables[table]!r}."
            )
            continue
        clash = next((c for c in _claims(spec) if c in claims), None)
        if clash is not None:
            problems[name] = Problem(
                "InterfaceConflict",
                f"{clash[0]} {clash[1]!r} is already claimed by VRF {claims[clash]!r}.",
            )
            continue
        if table is not None:
            tables[table] = name
        for claim in _claims(spec):
            claims[claim] = name
    return problems


def allocate_tables(
    vrfs: Mapping[str, specs.VRFSpec],
    *,
    current: Mapping[str, int] | None = None,
    first: int = AUTO_TABLE_FIRST,
    last: int = AUTO_TABLE_LAST,
) -> dict[str, int]:
    """Table per VRF, unique on the node: explicit ones as given, others allocated.

    Call with conflict-free specs (see `find_conflicts`). A VRF keeps the table it has in
    ``current`` unless its spec names another; new ones take the lowest free id in
    ``first..last``. Raises `SpecError` (``TablesExhausted``) when the range is full.
    """
    current = current or {}
    result: dict[str, int] = {}
    for name, spec in vrfs.items():
        if spec.get("table") is not None:
            result[name] = spec["table"]
    taken = set(result.values())
    for name in _order(vrfs, current):
        if name in result:
            continue
        held = current.get(name)
        if held is not None and held not in taken and held not in RESERVED_TABLES:
            result[name] = held
            taken.add(held)
    free = (t for t in range(first, last + 1) if t not in taken and t not in RESERVED_TABLES)
    for name in _order(vrfs, current):
        if name in result:
            continue
        table = next(free, None)
        if table is None:
            raise SpecError(
                Problem("TablesExhausted", f"no free routing table in {first}..{last}.")
            )
        result[name] = table
    return result


# -- the plan ---------------------------------------------------------------------------


def choose_backend(requested: specs.Backend, *, kernel_has_vrf: bool) -> specs.RealBackend:
    """The backend this node uses: l3mdev where asked and available, else a netns."""
    if requested == "vrf" and not kernel_has_vrf:
        raise SpecError(
            Problem(
                "BackendUnavailable",
                "backend vrf was requested but this node's kernel has no l3mdev VRF support.",
            )
        )
    if requested == "netns":
        return "netns"
    return "vrf" if kernel_has_vrf else "netns"


def plan(
    name: str,
    spec: specs.VRFSpec,
    *,
    table: int,
    bridge_for: Callable[[str, int | None], str],
    kernel_has_vrf: bool,
) -> DesiredVRF:
    """The node state for one VRF. ``bridge_for(network, vlan)`` names the segment bridge."""
    _check(name, spec)
    interfaces = []
    for iface in spec.get("interfaces", []):
        bridge = None
        if "network" in iface:
            bridge = bridge_for(iface["network"], iface.get("vlan"))
        interfaces.append(
            DesiredInterface(
                name=iface["name"],
                addresses=tuple(str(ipaddress.ip_interface(a)) for a in iface.get("addresses", [])),
                mac=interface_mac(name, iface["name"]),
                bridge=bridge,
                host_interface=iface.get("hostInterface"),
            )
        )
    routes = tuple(
        DesiredRoute(
            prefix=str(ipaddress.ip_network(r["prefix"])),
            type=r.get("type", "unicast"),
            via=str(ipaddress.ip_address(r["via"])) if "via" in r else None,
            device=r.get("device"),
            metric=r.get("metric", 0),
        )
        for r in spec.get("routes", [])
    )
    return DesiredVRF(
        name=name,
        table=table,
        backend=choose_backend(spec.get("backend", "auto"), kernel_has_vrf=kernel_has_vrf),
        interfaces=tuple(interfaces),
        routes=routes,
        limits=limits_from(spec.get("resources")),
    )


def check_node_support(name: str, spec: specs.VRFSpec, *, kernel_has_8021q: bool) -> None:
    """Refuse what this node's kernel cannot build, with a sentence saying so.

    A VLAN member needs an 802.1Q sub-interface of the network's bridge; a kernel without
    802.1Q would silently leave the VRF on the untagged segment (a leak), so refuse.
    """
    if kernel_has_8021q:
        return
    for iface in spec.get("interfaces", []):
        if "vlan" in iface:
            raise SpecError(
                Problem(
                    "BackendUnavailable",
                    f"interface {iface['name']!r} wants VLAN {iface['vlan']} on network "
                    f"{iface.get('network')!r}: 802.1Q not available in this kernel.",
                )
            )


def selects_node(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Whether a VRF's nodeSelector matches a node's labels (empty selects every node)."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


@dataclass(frozen=True)
class NodePlan:
    """What one node should hold: VRFs to realize, VRFs refused, VRFs to remove."""

    desired: dict[str, DesiredVRF]
    refused: dict[str, Problem]


def plan_node(
    vrfs: Mapping[str, specs.VRFSpec],
    *,
    labels: Mapping[str, str],
    current: Mapping[str, int],
    bridge_for: Callable[[str, int | None], str],
    kernel_has_vrf: bool,
    kernel_has_8021q: bool = True,
) -> NodePlan:
    """Select, check, allocate and plan every VRF for one node in one pure step.

    ``current`` maps VRFs realized on the node to their tables so they keep them. Refused
    VRFs are not realized at all; anything on the node not in ``desired`` is to be removed.
    """
    selected = {n: s for n, s in vrfs.items() if selects_node(s.get("nodeSelector"), labels)}
    refused = find_conflicts(selected, current=current)
    good = {n: s for n, s in selected.items() if n not in refused}
    try:
        tables = allocate_tables(good, current=current)
    except SpecError as error:
        return NodePlan(desired={}, refused={n: error.problem for n in good} | refused)
    desired: dict[str, DesiredVRF] = {}
    for name, spec in good.items():
        try:
            check_node_support(name, spec, kernel_has_8021q=kernel_has_8021q)
            desired[name] = plan(
                name,
                spec,
                table=tables[name],
                bridge_for=bridge_for,
                kernel_has_vrf=kernel_has_vrf,
            )
        except SpecError as error:
            refused[name] = error.problem
    return NodePlan(desired=desired, refused=refused)
