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
OWNED_CONDITIONS = (ConditionType.READY, ConditionType.SCHEDULED)
OWNED_FIELDS = ("phase", "readyNodes", "tableAllocated", "observedGeneration")


def _entry_reason(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, sentence) from an agent's node entry (its ``reason`` and ``message``)."""
    reason = entry.get("reason") or Reason.NODE_NOT_READY
    return str(reason), str(entry.get("message") or "not ready")


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
