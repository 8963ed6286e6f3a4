"""The VM's node after a live migration: where ``status.migration`` says it now runs. Pure.

The Migration reconciler records the migration on the VM (``status.migration``, its own
field manager); the VM reconciler owns ``nodeName`` and the ``kubevisor.io/node`` label,
so it is the one that moves them (docs/architecture.md, "Migration"): once
``status.migration`` says Succeeded and ``nodeName`` is still its ``sourceNode``, the VM
now runs on ``targetNode``. While a migration is unfinished, failed or cancelled the VM
stays where it is placed (never re-placed, never reverted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from kubevisor.api import migrations, nodeloss


def state(status: Mapping[str, Any]) -> migrations.VMMigrationState | None:
    """``status.migration`` read through the contract's model (None when absent or
    unreadable: then nothing moves)."""
    raw = status.get("migration")
    if not raw:
        return None
    try:
        return migrations.VMMigrationState.model_validate(raw)
    except pydantic.ValidationError:
        return None


def moved_to(status: Mapping[str, Any]) -> str | None:
    """The node the VM must be moved to, or None when it stays.

    A Succeeded migration whose ``sourceNode`` is the VM's ``nodeName`` moves it to the
    ``targetNode``; any other state (unfinished, Failed, Cancelled, already moved, or a
    record of a migration from another node) leaves ``nodeName`` alone."""
    record = state(status)
    node = status.get("nodeName")
    if record is None or not node or record.phase is not migrations.MigrationPhase.SUCCEEDED:
        return None
    if record.source_node != node or record.target_node == node:
        return None
    return record.target_node


def relocated_to(status: Mapping[str, Any]) -> str | None:
    """The node the VM must be moved to after a Succeeded migration (``moved_to``) or
    after its node was lost and fenced (``nodeloss.recovered_to``: the node-loss pass
    recorded ``status.recovery`` for the VM's current node); None when it stays."""
    return moved_to(status) or nodeloss.recovered_to(status)
