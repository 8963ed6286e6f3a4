"""Node loss: the rules controller, agent and the local cluster's fence step share.

A node whose agent Lease expired (``nodes.NodeLease.alive``) is *lost*. Its VMs are not
started anywhere else until the node is *fenced*: its core/v1 Node object carries the
taint :data:`TAINT_OUT_OF_SERVICE` (Kubernetes' non-graceful node shutdown), which says
that nothing of the node runs any more. Then the controller's node-loss pass records on
each recoverable VM where it restarts (``status.recovery``, field manager
:data:`FIELD_MANAGER`), and the VM reconciler moves ``nodeName`` and the
``kubevisor.io/node`` label there (:func:`recovered_to`), as it does after a live
migration. A node that comes back finds domains of VMs now placed elsewhere: stale
copies (:func:`stale_here`), which its agent destroys before it starts anything, keeping
their disks. Details in docs/node-loss.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from kubevisor.api import common, groups

#: The taint that fences a node, e.g.
#: ``kubectl taint node N node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``.
TAINT_OUT_OF_SERVICE: Final = "node.kubernetes.io/out-of-service"
#: The value and effect the local cluster's fence step writes (any value/effect fences).
TAINT_VALUE: Final = "nodeshutdown"
TAINT_EFFECT: Final = "NoExecute"
#: Field manager of the node-loss pass on VMs: the NodeLost condition and ``recovery``.
FIELD_MANAGER: Final = "kubevisor-controller-nodeloss"


class VMRecoveryState(common.Model):
    """``status.recovery`` of a VirtualMachine: its node was lost and fenced, and the
    node-loss pass chose ``toNode`` to restart it on from its shared disks. Stays after
    the move as the record of the last recovery."""

    from_node: common.ShortString
    """The lost (and fenced) node the VM was placed on."""
    to_node: common.ShortString
    """The node it restarts on."""


def out_of_service_taint() -> dict[str, str]:
    """The taint the local cluster's fence step puts on a Node (pure)."""
    return {"key": TAINT_OUT_OF_SERVICE, "value": TAINT_VALUE, "effect": TAINT_EFFECT}


def fenced(node_object: Mapping[str, Any]) -> bool:
    """Whether a core/v1 Node object carries the out-of-service taint (any value or
    effect): the node is known to run nothing."""
    taints = (node_object.get("spec") or {}).get("taints") or []
    return any(isinstance(t, Mapping) and t.get("key") == TAINT_OUT_OF_SERVICE for t in taints)


def fenced_nodes(node_objects: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the fenced Node objects. A node without a Node object is never fenced."""
    return frozenset(str((n.get("metadata") or {}).get("name")) for n in node_objects if fenced(n))


def recovery(status: Mapping[str, Any]) -> VMRecoveryState | None:
    """``status.recovery`` through the model; None when absent or unreadable."""
    raw = status.get("recovery")
    if not isinstance(raw, Mapping):
        return None
    try:
        return VMRecoveryState.model_validate(raw)
    except ValueError:
        return None


def recovered_to(status: Mapping[str, Any]) -> str | None:
    """The node a recovered VM must be moved to, or None: ``recovery.toNode`` while
    ``nodeName`` is still its ``fromNode`` (after the move, or for a record of an older
    recovery, nothing moves). Pure; the VM reconciler and the placement ledger use it."""
    record = recovery(status)
    node = status.get("nodeName")
    if record is None or not node or record.from_node != node or record.to_node == node:
        return None
    return record.to_node


def stale_here(vm: Mapping[str, Any] | None, node: str) -> bool:
    """Whether a domain of ``vm`` found on ``node`` is a stale copy: the VM exists but is
    placed on another node (label ``kubevisor.io/node``) and is not migrating here
    (label ``kubevisor.io/migration-target``). A VM with no node label yet is not judged
    stale (never placed: nothing runs it elsewhere). Pure; the agent's sweep uses it."""
    if vm is None:
        return False
    labels = (vm.get("metadata") or {}).get("labels") or {}
    placed = labels.get(groups.LABEL_NODE)
    if not placed or placed == node:
        return False
    return labels.get(groups.LABEL_MIGRATION_TARGET) != node
