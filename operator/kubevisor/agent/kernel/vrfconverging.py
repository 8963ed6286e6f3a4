"""The pure half of realizing a VRF: what to install, and whether the kernel holds the plan.

:mod:`kubevisor.agent.kernel.vrfrealizing` does the netlink work; the decisions it takes
on plain data live here: the planned routes as the kernel routes to sync, the status
reported when a pass fails, and when a read-back counts as converged.
"""

from __future__ import annotations

from collections.abc import Callable

from kubevisor.agent.kernel import routes
from kubevisor.agent.vrfs import planning, specs
from kubevisor.api.conditions import Reason


class RealizeError(Exception):
    """A node-side problem the user can fix (missing bridge or host interface)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def kernel_routes(
    desired: planning.DesiredVRF, oif: Callable[[str], int | None]
) -> list[routes.KernelRoute]:
    """The VRF's planned routes in its table; ``oif`` resolves a device name to its index.

    A route naming a device the VRF does not hold is a `RealizeError` (DeviceMissing),
    not a route silently left out.
    """
    result = []
    for route in desired.routes:
        index = None
        if route.device is not None:
            index = oif(route.device)
            if index is None:
                raise RealizeError(
                    Reason.DEVICE_MISSING,
                    f"route {route.prefix}: device {route.device!r} is missing.",
                )
        result.append(
            routes.KernelRoute(
                dst=route.prefix,
                table=desired.table,
                type=routes.ROUTE_TYPES[route.type],
                gateway=route.via,
                oif=index,
                priority=route.metric,
            )
        )
    return result


def failed(desired: planning.DesiredVRF, *, reason: str, message: str) -> specs.NodeVRFStatus:
    """Status of a pass that stopped on ``reason``: nothing is claimed as installed."""
    return {
        "backend": desired.backend,
        "table": desired.table,
        "interfaces": [],
        "routesInstalled": 0,
        "ready": False,
        "reason": reason,
        "message": message,
    }


def converged(
    desired: planning.DesiredVRF, observed: specs.NodeVRFStatus, *, installed: int
) -> specs.NodeVRFStatus:
    """``observed`` (read back after a pass that synced ``installed`` routes), judged.

    Ready when the kernel holds exactly the planned interfaces and every planned route.
    In vrf mode a host interface keeps its own name; in a namespace it is renamed.
    """
    wanted = sorted(
        (i.host_interface or i.name) if desired.backend == "vrf" else i.name
        for i in desired.interfaces
    )
    ready = (
        observed["interfaces"] == wanted
        and installed == len(desired.routes) == observed["routesInstalled"]
    )
    status = observed.copy()
    status["ready"] = ready
    status["reason"] = None if ready else Reason.NOT_CONVERGED
    status["message"] = "realized" if ready else "kernel state differs from the plan"
    return status
