"""Which VRF objects this node realizes, and the per-node status entry it reports.

Pure functions over raw VRF objects (the API server's wire form). The agent's loop
(``kubevisor.agent.vrfs.handling``) feeds them the watch cache and writes what they return.

The contract with the controller (which decides conflicts and tables once, for every
node): a VRF is realized on a node when its ``nodeSelector`` matches the node's labels
(``vrfs.selects_node``, the controller's function too), it is not being deleted, and the
controller has decided its current generation (``status.observedGeneration`` equals
``metadata.generation``) without refusing it; the table to use is then
``status.tableAllocated`` (spec.table, or the one the controller allocated). Until the
controller has decided, the VRF is *waiting*: the node keeps what it holds for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubevisor.agent.vrfs import planning, specs
from kubevisor.api import conditions, eventreasons, vrfs
from kubevisor.api.conditions import Reason

#: Ready reasons with which the controller refuses a VRF (controller/vrfs/planning.py).
CONTROLLER_REFUSALS = conditions.VRF_REFUSALS
#: Entry fields compared to decide whether to write (lastSyncTime and usage excluded).
COMPARED = ("backend", "table", "interfaces", "routesInstalled", "ready", "reason", "message")
#: Compared too, without its None values (a merge patch clears them, so they read absent).
COMPARED_DAEMON = "daemon"
#: How old the reported usage may get before an otherwise unchanged entry is rewritten.
USAGE_REFRESH_SECONDS = 300.0

Key = tuple[str, str]


def realized_name(namespace: str, name: str) -> str:
    """The VRF's name on the node: namespaces never contain dots, so this is unique."""
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class Selected:
    """One VRF this node should hold, as the controller accepted it."""

    key: Key
    generation: int
    spec: vrfs.VRFSpec
    table: int


@dataclass(frozen=True)
class Waiting:
    """A VRF selected onto this node that cannot be realized yet, and why."""

    key: Key
    generation: int
    problem: planning.Problem


@dataclass
class Selection:
    """The node's share of the VRF objects."""

    wanted: dict[str, Selected] = field(default_factory=dict)
    """By realized name: VRFs to plan and realize."""
    waiting: dict[str, Waiting] = field(default_factory=dict)
    """By realized name: selected, not realizable yet; left as the node holds them."""
    reporting: set[Key] = field(default_factory=set)
    """Objects on which this node keeps an entry (wanted and waiting)."""


def _refused(status: Mapping[str, Any]) -> bool:
    ready = conditions.get_condition(list(status.get("conditions") or []), "Ready") or {}
    return ready.get("status") == "False" and ready.get("reason") in CONTROLLER_REFUSALS


def _raw_selector(obj: Mapping[str, Any]) -> dict[str, str]:
    selector = (obj.get("spec") or {}).get("nodeSelector")
    return {str(k): str(v) for k, v in selector.items()} if isinstance(selector, dict) else {}


def why_not_selected(obj: Mapping[str, Any], *, labels: Mapping[str, str]) -> str:
    """Why this node holds no entry for ``obj``, as a sentence for the agent's log (it
    never removes its own ``status.nodes`` entry without saying why)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "the VRF is being deleted"
    try:
        selector = vrfs.parse_spec(obj).node_selector
    except vrfs.InvalidVRF:
        selector = _raw_selector(obj)
    missing = sorted(f"{k}={v}" for k, v in selector.items() if labels.get(k) != v)
    if missing:
        return f"nodeSelector no longer matches this node (it lacks {', '.join(missing)})"
    return "the controller refused the VRF's current generation"


def select(objs: Iterable[Mapping[str, Any]], *, labels: Mapping[str, str]) -> Selection:
    """Split the VRF objects into those to realize here, those waiting, and the rest."""
    result = Selection()
    for obj in objs:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        generation = int(meta.get("generation") or 0)
        status = obj.get("status") or {}
        try:
            spec: vrfs.VRFSpec | None = vrfs.parse_spec(obj)
            problem = None
        except vrfs.InvalidVRF as exc:
            spec, problem = None, planning.Problem(Reason.INVALID_SPEC, f"spec is invalid: {exc}")
        selector = spec.node_selector if spec is not None else _raw_selector(obj)
        if not vrfs.selects_node(selector, labels):
            continue
        decided = status.get("observedGeneration") == generation
        if decided and _refused(status):
            continue
        name = realized_name(*key)
        result.reporting.add(key)
        allocated = status.get("tableAllocated")
        if spec is not None and decided and isinstance(allocated, int) and allocated > 0:
            result.wanted[name] = Selected(key, generation, spec, allocated)
            continue
        if problem is None:
            problem = planning.Problem(
                Reason.WAITING_FOR_TABLE,
                f"the controller has not decided generation {generation} yet.",
            )
        result.waiting[name] = Waiting(key, generation, problem)
    return result


def entry(
    status: specs.NodeVRFStatus | None,
    *,
    generation: int,
    now: str,
    problem: planning.Problem | None = None,
    table: int | None = None,
) -> dict[str, Any]:
    """The wire form of ``status.nodes.<node>``: every field present (None clears it under
    a JSON merge patch), so a write replaces the whole entry. Without a read-back
    ``status`` the node is not ready for ``problem``'s reason."""
    if status is None:
        return {
            "backend": None,
            "table": table,
            "interfaces": [],
            "routesInstalled": 0,
            "ready": False,
            "reason": problem.reason if problem is not None else Reason.NODE_NOT_READY,
            "message": problem.message if problem is not None else None,
            "usage": None,
            "daemon": None,
            "observedGeneration": generation,
            "lastSyncTime": now,
        }
    usage = status.get("usage")
    daemon = status.get("daemon")
    return {
        "backend": status["backend"],
        "table": status["table"],
        "interfaces": list(status["interfaces"]),
        "routesInstalled": status["routesInstalled"],
        "ready": status["ready"],
        "reason": status["reason"],
        "message": status["message"],
        "usage": dict(usage) if usage is not None else None,
        "daemon": dict(daemon) if daemon is not None else None,
        "observedGeneration": generation,
        "lastSyncTime": now,
    }


def _set(value: Any) -> dict[str, Any] | None:
    """A nested entry as the API server holds it after a merge patch (no None values)."""
    if not isinstance(value, Mapping):
        return None
    return {k: v for k, v in value.items() if v is not None}


def needs_write(
    current: Mapping[str, Any] | None, wanted: Mapping[str, Any], *, age_seconds: float | None
) -> bool:
    """Whether the node's entry must be written: a compared field or the generation
    differs, usage appeared/vanished, or the usage shown is older than the refresh."""
    if current is None:
        return True
    for name in (*COMPARED, "observedGeneration"):
        if current.get(name) != wanted.get(name):
            return True
    if _set(current.get(COMPARED_DAEMON)) != _set(wanted.get(COMPARED_DAEMON)):
        return True
    if (current.get("usage") is None) != (wanted.get("usage") is None):
        return True
    if wanted.get("usage") is not None and (
        age_seconds is None or age_seconds > USAGE_REFRESH_SECONDS
    ):
        return True
    return False


def failure(have: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of the Warning Event for this node's new ``entry`` of a VRF
    (``have``: the entry the object shows), or None: only a failure (a reason
    ``api/eventreasons`` calls Warning: a refused daemon config, a kernel error, a missing
    device) that is new or says something new; a wait or a repeat posts nothing."""
    if entry.get("ready") or not entry.get("reason"):
        return None
    reason, message = str(entry["reason"]), str(entry.get("message") or entry["reason"])
    if eventreasons.type_of(reason, default="Normal") != eventreasons.EventType.WARNING:
        return None
    if have is not None and (have.get("reason"), have.get("message")) == (
        entry["reason"],
        entry.get("message"),
    ):
        return None
    return reason, message
