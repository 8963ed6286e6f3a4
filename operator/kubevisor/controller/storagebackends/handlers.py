"""The controller's part of a StorageBackend: say it was read (``Ready=True``, reason
``Accepted``, phase Accepted) once per generation. Which nodes reach it is each agent's
report in its Lease (``nodes.Capacity.storage_backends``), not this object's status: a
node's view changes with the node, and one writer per fact keeps them apart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubevisor.api import conditions, kinds, storagebackends
from kubevisor.controller.kube import operating

MESSAGE = (
    "The backend is accepted; each node reports in its Lease whether it reaches it, and "
    "VMs whose disks name it are placed and migrated only among those nodes."
)


def status_patch(status: dict[str, Any], generation: int, now: datetime) -> dict[str, Any]:
    """The status of an accepted backend (pure)."""
    updated = conditions.set_condition(
        list(status.get("conditions") or []),
        type=conditions.ConditionType.READY,
        status="True",
        reason=conditions.Reason.ACCEPTED,
        message=MESSAGE,
        generation=generation,
        now=now,
    )
    return {
        "conditions": updated,
        "observedGeneration": generation,
        "phase": storagebackends.StorageBackendPhase.ACCEPTED.value,
    }


def handler() -> operating.OnChange:
    """Answer create/resume/update of a StorageBackend, once per generation."""

    def report(meta: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        generation = int(meta.get("generation") or 0)
        if status.get("observedGeneration") == generation:
            return None
        return status_patch(status, generation, datetime.now(UTC))

    plural = kinds.STORAGEBACKEND.plural
    return operating.OnChange(plural, f"accept-{plural}", report)
