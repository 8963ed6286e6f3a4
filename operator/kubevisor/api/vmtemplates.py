"""VMTemplate: a reusable machine shape (CPU, memory, disks from base images, NICs,
boot, display, placement hints) that VirtualMachines reference by name."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from kubevisor.api import common, conditions, machines
from kubevisor.api.machines import MachineSpec

__all__ = ["MachineSpec", "VMTemplate", "VMTemplatePhase", "VMTemplateStatus"]


class VMTemplatePhase(StrEnum):
    """Whether the template can be used."""

    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class VMTemplateStatus(conditions.Status):
    """Observed state of a VMTemplate."""

    phase: VMTemplatePhase | None = None
    """Pending until checked, Ready when usable, Failed with a condition saying why."""


class VMTemplate(common.Resource):
    """A reusable machine shape; VirtualMachines reference it with spec.templateRef."""

    kind: Literal["VMTemplate"] = "VMTemplate"
    """Always VMTemplate."""
    spec: machines.MachineSpec
    """The machine shape; cpu and memory are required."""
    status: VMTemplateStatus | None = None
    """Observed state."""
