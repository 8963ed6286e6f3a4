"""The status fields the controller owns on a VRF, from its decision and the agents'
node entries. Pure.

The handler applies exactly ``build_status``'s dict with server-side apply (field
manager kubevisor-controller); agents own ``status.nodes.<node>`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubevisor.api import conditions, vrfs
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller.vrfs import planning

#: The condition types and status fields the controller owns on a VRF.
OWNED_CONDITIONS = (
    ConditionType.READY,
    ConditionType.SCHEDULED,
    ConditionType.ROUTING_SESSIONS,
)
OWNED_FIELDS = ("phase", "readyNodes", "tableAllocated", "observedGeneration")


def _entry_reason(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, sentence) from an agent's node entry (its ``reason`` and ``message``)."""
    reason = entry.get("reason") or Reason.NODE_NOT_READY
    return str(reason), str(entry.get("message") or "not ready")


def _session_phrase(session: Mapping[str, Any]) -> str:
    name = session.get("name")
    if session.get("protocol") == "OSPF":
        return f"OSPF instance {name} has no Full adjacency ({session.get('state') or 'down'})"
    who = f" (neighbor {session['neighbor']})" if session.get("neighbor") else ""
    return f"BGP session {name}{who} is {session.get('state') or 'down'}"


def sessions_condition(
    nodes: list[str], entries: Mapping[str, Any]
) -> tuple[conditions.ConditionStatus, str, str] | None:
    """The RoutingSessions condition (status, reason, sentence) from the daemons' session
    lists on ``nodes``; None while no daemon reports a session. A session down anywhere
    makes it False, naming each node and session."""
    total = up = 0
    down: list[str] = []
    for node in nodes:
        daemon = (entries.get(node) or {}).get("daemon") or {}
        listed = daemon.get("sessions") or []
        total += int(daemon.get("sessionsTotal") or len(listed))
        up += int(daemon.get("sessionsUp") or 0)
        down += [f"{node}: {_session_phrase(s)}" for s in listed if not s.get("up")]
    if total == 0:
        return None
    if down or up < total:
        shown = "; ".join(down[:8]) + ("; ..." if len(down) > 8 else "")
        return "False", Reason.SESSION_DOWN, f"{up}/{total} sessions up; {shown}."
    return "True", Reason.SESSIONS_UP, f"{up}/{total} sessions up."


def build_status(
    item: planning.Item, decision: planning.Decision, *, now: datetime
) -> dict[str, Any]:
    """The fields the controller owns, from its decision and the agents' node entries.

    A node counts as ready when its entry says ``ready`` for the current generation.
    """
    current = dict(item.status)
    listed: list[dict[str, Any]] = list(current.get("conditions") or [])
    gen = item.generation
    entries: Mapping[str, Any] = current.get("nodes") or {}

    def cond(type_: str, status: conditions.ConditionStatus, reason: str, message: str) -> None:
        nonlocal listed
        listed = conditions.set_condition(
            listed,
            type=type_,
            status=status,
            reason=reason,
            message=message,
            generation=gen,
            now=now,
        )

    ready = [
        n
        for n in decision.nodes
        if (entries.get(n) or {}).get("ready") is True
        and (entries.get(n) or {}).get("observedGeneration") == gen
    ]
    total = len(decision.nodes)
    out: dict[str, Any] = {"observedGeneration": gen, "readyNodes": f"{len(ready)}/{total}"}
    if decision.reason:
        phase = vrfs.VRFPhase.FAILED
        cond(ConditionType.READY, "False", decision.reason, decision.message)
        cond(ConditionType.SCHEDULED, "False", decision.reason, decision.message)
    elif total == 0:
        phase = vrfs.VRFPhase.PENDING
        msg = "no node matches nodeSelector (nodes come from live agent Leases)."
        cond(ConditionType.READY, "False", Reason.UNSCHEDULABLE, msg)
        cond(ConditionType.SCHEDULED, "False", Reason.UNSCHEDULABLE, msg)
    else:
        cond(
            ConditionType.SCHEDULED,
            "True",
            Reason.SCHEDULED,
            f"selected {planning.nodes_text(decision.nodes)}.",
        )
        failing = [
            (n, _entry_reason(entries[n]))
            for n in decision.nodes
            if n not in ready
            and (entries.get(n) or {}).get("observedGeneration") == gen
            and (entries.get(n) or {}).get("ready") is False
        ]
        if len(ready) == total:
            phase = vrfs.VRFPhase.READY
            cond(
                ConditionType.READY,
                "True",
                Reason.AS_EXPECTED,
                f"realized on {len(ready)}/{total} nodes.",
            )
        elif failing:
            phase = vrfs.VRFPhase.DEGRADED
            text = "; ".join(f"{n}: {r[1]}" for n, r in failing)
            cond(
                ConditionType.READY,
                "False",
                failing[0][1][0],
                f"{len(ready)}/{total} ready; {text}",
            )
        else:
            phase = vrfs.VRFPhase.PROVISIONING
            waiting = [n for n in decision.nodes if n not in ready]
            cond(
                ConditionType.READY,
                "False",
                Reason.IN_PROGRESS,
                f"waiting for {planning.nodes_text(waiting)} to report.",
            )
    routing = sessions_condition(list(decision.nodes), entries)
    if routing is None:
        listed = [c for c in listed if c.get("type") != ConditionType.ROUTING_SESSIONS]
    else:
        cond(ConditionType.ROUTING_SESSIONS, *routing)
    out["phase"] = str(phase)
    if decision.table is not None:
        out["tableAllocated"] = decision.table
    out["conditions"] = [c for c in listed if c.get("type") in OWNED_CONDITIONS]
    return out


def owned_view(current: Mapping[str, Any]) -> dict[str, Any]:
    """Our fields as they stand in an object's status, shaped like `build_status`."""
    out = {k: current[k] for k in OWNED_FIELDS if current.get(k) is not None}
    out["conditions"] = [
        dict(c) for c in current.get("conditions") or [] if c.get("type") in OWNED_CONDITIONS
    ]
    return out


def same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when applying ``wanted`` would change nothing we own."""
    return owned_view(current) == dict(wanted)
