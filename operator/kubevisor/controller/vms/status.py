"""The status fields the controller owns on a VirtualMachine, computed in one place.

Pure. The handler applies exactly this dict with server-side apply (field manager
kubevisor-controller), always the full set of our fields, so the agent's fields and
condition types are never touched (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubevisor.api import conditions, machines, virtualmachines
from kubevisor.api.conditions import ConditionStatus, ConditionType, Reason

#: The condition types the controller owns on a VirtualMachine.
OWNED_CONDITIONS = (
    ConditionType.ANNOTATIONS_VALID,
    ConditionType.RESTART_REQUIRED,
    ConditionType.RESTORED,
    ConditionType.SCHEDULED,
    ConditionType.SSH_KEYS_READY,
    ConditionType.TEMPLATE_RESOLVED,
)
#: Status fields the controller owns (besides conditions and phase).
OWNED_FIELDS = (
    "nodeName",
    "machine",
    "desiredState",
    "restartToken",
    "restartRequired",
    "restore",
    "observedGeneration",
)


@dataclass(frozen=True)
class Cond:
    """One condition's status, reason and sentence."""

    status: ConditionStatus
    reason: str
    message: str


def machine_wire(machine: machines.MachineSpec) -> dict[str, Any]:
    """The machine as written into status: every field, defaults included, so the agent
    never has to know the model's defaults."""
    return machine.model_dump(mode="json", by_alias=True, exclude_none=True)


def build(
    current: dict[str, Any],
    *,
    generation: int,
    now: datetime,
    node: str | None,
    machine: machines.MachineSpec | None,
    desired: str,
    restart_token: str | None,
    phase: str | None,
    conds: dict[str, Cond],
    restore: virtualmachines.VMRestoreState | None = None,
) -> dict[str, Any]:
    """The controller's status: ``current`` is the object's status (for transition
    times); ``conds`` maps our condition types to their values; ``phase`` only while
    the VM is not placed."""
    listed: list[dict[str, Any]] = list(current.get("conditions") or [])
    if phase is not None:
        conds = {**conds, ConditionType.READY: unplaced_ready(conds)}
    for type_, cond in conds.items():
        listed = conditions.set_condition(
            listed,
            type=type_,
            status=cond.status,
            reason=cond.reason,
            message=cond.message,
            generation=generation,
            now=now,
        )
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "desiredState": desired,
        "restartRequired": conds[ConditionType.RESTART_REQUIRED].status == "True",
        "conditions": [c for c in listed if c.get("type") in conds],
    }
    if node is not None:
        out["nodeName"] = node
    if machine is not None:
        out["machine"] = machine_wire(machine)
    if restart_token is not None:
        out["restartToken"] = restart_token
    if restore is not None:
        out["restore"] = restore.model_dump(mode="json", by_alias=True, exclude_none=True)
    if phase is not None:
        out["phase"] = phase
    return out


def unplaced_ready(conds: dict[str, Cond]) -> Cond:
    """Ready of a VM no agent has yet (the controller's only while unplaced, like phase):
    False with the reason that keeps it off a node, so ``kubectl wait --for=condition=Ready``
    and ``kubectl get`` see a Ready condition from the first status write."""
    for type_ in (
        ConditionType.TEMPLATE_RESOLVED,
        ConditionType.SSH_KEYS_READY,
        ConditionType.SCHEDULED,
    ):
        cond = conds.get(type_)
        if cond is not None and cond.status != "True":
            return Cond("False", cond.reason, cond.message)
    return Cond("False", Reason.IN_PROGRESS, "not placed on a node yet")


def owned_view(current: dict[str, Any], *, with_phase: bool) -> dict[str, Any]:
    """Our fields as they stand in ``current``, shaped like ``build``'s output, so an
    unchanged status is recognised and not written again."""
    out = {k: current[k] for k in OWNED_FIELDS if current.get(k) is not None}
    if "machine" in out:
        # Normalised through the model: the API server may add schema defaults.
        out["machine"] = machine_wire(machines.MachineSpec.model_validate(out["machine"]))
    owned = (*OWNED_CONDITIONS, ConditionType.READY) if with_phase else OWNED_CONDITIONS
    out["conditions"] = [dict(c) for c in current.get("conditions") or [] if c.get("type") in owned]
    if with_phase and current.get("phase") is not None:
        out["phase"] = current["phase"]
    return out


def same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when applying ``wanted`` would change nothing we own."""
    view = owned_view(current, with_phase="phase" in wanted)
    return view == {k: v for k, v in wanted.items() if v is not None}


def condition(current: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in a status, if any."""
    for c in current.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None
