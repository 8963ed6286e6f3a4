"""RebalancePolicy: one per cluster, it says whether and how the controller moves running
VMs between nodes on its own (docs/rebalancing.md).

Off leaves every VM where it is. Balance (vSphere's DRS) keeps each node's utilization
within ``balance.thresholdPercent`` of the mean. Consolidate (vSphere's DPM) packs VMs
onto fewer nodes up to ``consolidate.targetUtilizationPercent``, marks the nodes it
empties for power-off, and brings one back when the powered nodes' utilization rises
above ``consolidate.wakeUtilizationPercent``. Moves are ordinary Migrations named
``<vm>-rebalance-<n>``, at most ``maxMovesPerPass`` per pass, within the migration
limits. The object is cluster-scoped and must be named :data:`NAME`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field

from kubevisor.api import common, conditions

#: The one RebalancePolicy a cluster has (the CRD refuses any other name).
NAME: Final = "cluster"
#: Field manager of the rebalancer's writes (policy status, Node conditions).
FIELD_MANAGER: Final = "kubevisor-controller-rebalancing"
#: Label on the Migrations the rebalancer creates: the policy mode that asked for it.
LABEL_REBALANCE: Final = "kubevisor.io/rebalance"
#: Condition type on a core/v1 Node the rebalancer emptied (Consolidate).
NODE_POWER_OFF: Final = "KubevisorPowerOff"


def powered_off(node_objects: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the core/v1 Node objects whose :data:`NODE_POWER_OFF` condition is True:
    marked for power-off by consolidation (the one reading of the mark; the rebalancer,
    placement, the node-loss pass and the local cluster's power switch all use it)."""
    out = set()
    for n in node_objects:
        for c in (n.get("status") or {}).get("conditions") or []:
            if c.get("type") == NODE_POWER_OFF and c.get("status") == "True":
                out.add(str((n.get("metadata") or {}).get("name")))
    return frozenset(out)


class Mode(StrEnum):
    """What the rebalancer does."""

    OFF = "Off"
    """Nothing moves; nodes marked for power-off are brought back."""
    BALANCE = "Balance"
    """Spread load: every node's utilization within the threshold of the mean (DRS)."""
    CONSOLIDATE = "Consolidate"
    """Pack VMs onto fewer nodes and power the emptied ones off (DPM)."""


class RebalanceReason(StrEnum):
    """Reasons on the policy's Ready condition and on a Node's power-off condition."""

    BALANCED = "Balanced"
    """Every node is within the threshold; nothing to move."""
    MOVING = "Moving"
    """Migrations the last pass planned are under way."""
    CONSOLIDATED = "Consolidated"
    """No further node can be emptied within the target utilization."""
    DISABLED = "Disabled"
    """mode is Off."""
    WRONG_NAME = "WrongName"
    """Only the policy named ``cluster`` acts."""
    EMPTIED = "Emptied"
    """The node holds no VM; it is marked for power-off."""
    WOKEN = "Woken"
    """Utilization rose above the wake threshold (or the mode changed): powered on again."""


class RebalancePhase(StrEnum):
    """Where the rebalancer stands after its last look."""

    DISABLED = "Disabled"
    """mode is Off."""
    MOVING = "Moving"
    """Migrations of the last pass are under way."""
    BALANCED = "Balanced"
    """Balance: nothing to move."""
    CONSOLIDATED = "Consolidated"
    """Consolidate: no further node can be emptied."""


class BalanceSpec(common.Model):
    """Balance mode's knobs."""

    threshold_percent: Annotated[int, Field(ge=1, le=100)] = 10
    """Move VMs while a node's utilization (the larger of its CPU and memory share) is
    further than this many percentage points from the mean of all nodes."""


class ConsolidateSpec(common.Model):
    """Consolidate mode's knobs."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "self.wakeUtilizationPercent >= self.targetUtilizationPercent",
                "wakeUtilizationPercent must not be below targetUtilizationPercent, or a "
                "node would be woken as soon as it is packed",
                field_path=".wakeUtilizationPercent",
            )
        )
    )

    target_utilization_percent: Annotated[int, Field(ge=10, le=100)] = 80
    """Pack a receiving node up to this share of its CPU and memory, no further."""
    wake_utilization_percent: Annotated[int, Field(ge=10, le=100)] = 90
    """Power a node back on when the powered nodes together use more than this share (at
    least targetUtilizationPercent)."""
    power_off: bool = True
    """Mark emptied nodes for power-off (a Node condition and an Event; the local
    cluster stops the simulated node's libvirtd)."""


class RebalancePolicySpec(common.Model):
    """Whether and how running VMs move between nodes."""

    mode: Mode = Mode.OFF
    """Off, Balance or Consolidate."""
    interval_seconds: Annotated[int, Field(ge=5, le=86_400)] = 300
    """Seconds between passes."""
    max_moves_per_pass: Annotated[int, Field(ge=1, le=100_000)] = 5
    """The move budget: at most this many Migrations planned per pass."""
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    """Balance mode's knobs."""
    consolidate: ConsolidateSpec = Field(default_factory=ConsolidateSpec)
    """Consolidate mode's knobs."""


class PlannedMove(common.Model):
    """One move the last pass planned."""

    vm: common.ShortString
    """``namespace/name`` of the VM."""
    source_node: common.ShortString
    """Node it leaves."""
    target_node: common.ShortString
    """Node it goes to."""
    migration: common.ShortString
    """The Migration that moves it."""


class RebalancePolicyStatus(conditions.Status):
    """What the last pass found and did."""

    phase: RebalancePhase | None = None
    """Where the rebalancer stands (the Ready reason)."""
    last_pass_at: common.Timestamp | None = None
    """When the last pass ran."""
    moves: list[PlannedMove] = Field(default_factory=list, max_length=100_000)
    """The Migrations the last pass created."""
    bytes_planned: Annotated[int, Field(ge=0)] | None = None
    """Estimated bytes those Migrations send (memory, more for guests that dirty fast)."""
    powered_off_nodes: list[common.ShortString] = Field(default_factory=list, max_length=10_000)
    """Nodes marked for power-off (Consolidate)."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """A sentence saying what the last pass decided."""


class RebalancePolicy(common.Resource):
    """The cluster's rebalancing policy: Off, Balance (DRS) or Consolidate (DPM)."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                f"self.metadata.name == '{NAME}'",
                f"a cluster has one RebalancePolicy and it is named {NAME}",
            )
        )
    )

    kind: Literal["RebalancePolicy"] = "RebalancePolicy"
    """Always RebalancePolicy."""
    spec: RebalancePolicySpec = Field(default_factory=RebalancePolicySpec)
    """Whether and how running VMs move."""
    status: RebalancePolicyStatus | None = None
    """What the last pass did."""
