"""A VM's node move after a live migration, pure.

The Migration reconciler records the migration on the VM (``status.migration``); when
that record says Succeeded while ``status.nodeName`` still names its source node, the VM
reconciler moves the VM: first the labels (``kubevisor.io/node`` to the target, the
``kubevisor.io/migration-target`` label dropped; agents select VMs by label, so the target
agent takes the VM over and the source agent lets it go), then ``status.nodeName``. A
pass computed from a VM read before the move would write the source node back, so once
a VM carries a migration record every status write of the VM reconciler names the
resourceVersion it was computed from (the API server refuses a stale one; the pass runs
again on a fresh read).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubevisor.api import groups, migrations


def record(status: Mapping[str, Any]) -> migrations.VMMigrationState | None:
    """``status.migration`` parsed; None when absent or unreadable (pure)."""
    raw = status.get("migration")
    if raw is None:
        return None
    try:
        return migrations.VMMigrationState.model_validate(raw)
    except ValidationError:
        return None


def moved_to(status: Mapping[str, Any]) -> str | None:
    """The node a succeeded migration moved the VM to, while ``nodeName`` still names its
    source; None when there is nothing to move (pure)."""
    state = record(status)
    if state is None or state.phase is not migrations.MigrationPhase.SUCCEEDED:
        return None
    if status.get("nodeName") != state.source_node or state.target_node == state.source_node:
        return None
    return state.target_node


def moved_labels(labels: Mapping[str, str], target: str) -> dict[str, str]:
    """The VM's labels after the move (pure)."""
    out = {k: v for k, v in labels.items() if k != groups.LABEL_MIGRATION_TARGET}
    out[groups.LABEL_NODE] = target
    return out
