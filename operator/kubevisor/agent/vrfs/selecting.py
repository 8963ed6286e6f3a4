"""Which VRF objects this node realizes, and the per-node status entry it reports.

Pure functions over raw VRF objects (the API server's wire form). The agent's loop
(``kubevisor.agent.vrfs.handling``) feeds them the watch cache and writes what they return.

A VRF is realized on a node when its ``nodeSelector`` matches the node's labels, it is
not being deleted, the controller has not refused it (Ready=False with a refusal reason
for the current generation) and it has a table (``spec.table`` or the controller's
``status.tableAllocated``: one table for the VRF on every node, decided in one place).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubevisor.agent.vrfs import planning, specs
from kubevisor.api import conditions

#: Ready reasons with which the controller refuses a VRF (controller/vrfsplanning.py).
CONTROLLER_REFUSALS = conditions.VRF_REFUSALS
#: Entry fields compared to decide whether to write (lastSyncTime and usage excluded).
COMPARED = ("backend", "table", "interfaces", "routesInstalled", "ready", "message")
#: How old the reported usage may get before an otherwise unchanged entry is rewritten.
USAGE_REFRESH_SECONDS = 300.0

Key = tuple[str, str]


def realized_name(namespace: str, name: str) -> str:
    """The VRF's name on the node: namespaces never contain dots, so this is unique."""
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class Selected:
    """One VRF this node should hold."""

    key: Key
    generation: int
    spec: specs.VRFSpec


@dataclass
class Selection:
    """The node's share of the VRF objects."""

    wanted: dict[str, Selected] = field(default_factory=dict)
    """By realized name: VRFs to plan and realize."""
    waiting: dict[str, tuple[Selected, str]] = field(default_factory=dict)
    """By realized name: selected, but not realizable yet (no table), with the reason."""
    reporting: set[Key] = field(default_factory=set)
    """Objects on which this node keeps an entry (wanted and waiting)."""


def _refused(obj: Mapping[str, Any], generation: int) -> bool:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "Ready"
            and cond.get("status") == "False"
            and cond.get("reason") in CONTROLLER_REFUSALS
            and cond.get("observedGeneration") == generation
        ):
            return True
    return False


def select(objs: Iterable[Mapping[str, Any]], *, labels: Mapping[str, str]) -> Selection:
    """Split the VRF objects into those to realize here, those waiting, and the rest."""
    result = Selection()
    for obj in objs:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        spec: specs.VRFSpec = dict(obj.get("spec") or {})  # type: ignore[assignment]
        if not planning.selects_node(spec.get("nodeSelector"), labels):
            continue
        generation = int(meta.get("generation") or 0)
        if _refused(obj, generation):
            continue
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        name = realized_name(*key)
        allocated = (obj.get("status") or {}).get("tableAllocated")
        if spec.get("table") is None and isinstance(allocated, int) and allocated > 0:
            spec["table"] = allocated
        item = Selected(key=key, generation=generation, spec=spec)
        result.reporting.add(key)
        if spec.get("table") is None:
            result.waiting[name] = (
                item,
                f"{conditions.Reason.WAITING_FOR_TABLE}: "
                "the controller has not allocated a table yet.",
            )
        else:
            result.wanted[name] = item
    return result


def entry(
    status: specs.NodeVRFStatus | None,
    *,
    generation: int,
    now: str,
    message: str | None = None,
    table: int | None = None,
) -> dict[str, Any]:
    """The wire form of ``status.nodes.<node>``: every field present (None clears it under
    a JSON merge patch), so a write replaces the whole entry."""
    if status is None:
        return {
            "backend": None,
            "table": table,
            "interfaces": [],
            "routesInstalled": 0,
            "ready": False,
            "message": message,
            "usage": None,
            "observedGeneration": generation,
            "lastSyncTime": now,
        }
    usage = status.get("usage")
    return {
        "backend": status["backend"],
        "table": status["table"],
        "interfaces": list(status["interfaces"]),
        "routesInstalled": status["routesInstalled"],
        "ready": status["ready"],
        "message": message if message is not None else status["message"],
        "usage": dict(usage) if usage is not None else None,
        "observedGeneration": generation,
        "lastSyncTime": now,
    }


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
    if (current.get("usage") is None) != (wanted.get("usage") is None):
        return True
    if wanted.get("usage") is not None and (
        age_seconds is None or age_seconds > USAGE_REFRESH_SECONDS
    ):
        return True
    return False


def problem_message(problem: planning.Problem) -> str:
    """A per-node message in the form the controller parses: ``Reason: sentence``."""
    return f"{problem.reason}: {problem.message}"
