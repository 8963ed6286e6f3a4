"""The pure half of realizing a VRF: routes to install, and when a read-back is realized."""

from __future__ import annotations

import pytest

from kubevisor.agent.kernel import routes, vrfconverging
from kubevisor.agent.vrfs import planning, specs
from kubevisor.api import vrfs
from kubevisor.api.conditions import Reason

pytestmark = pytest.mark.unit

ETH0 = planning.DesiredInterface(name="eth0", addresses=(), mac="02:00:00:00:00:01", bridge="b")
HOST = planning.DesiredInterface(
    name="up0", addresses=(), mac="02:00:00:00:00:02", host_interface="ens4"
)
ROUTE = planning.DesiredRoute(prefix="10.0.0.0/8", via="172.16.0.2")


def _observed(interfaces: list[str], installed: int) -> specs.NodeVRFStatus:
    return {
        "backend": "netns",
        "table": 1000,
        "interfaces": interfaces,
        "routesInstalled": installed,
        "ready": True,
        "reason": None,
        "message": "observed",
    }


@pytest.mark.parametrize(
    ("backend", "interfaces", "installed", "read_back", "ready"),
    [
        ("netns", ["eth0", "up0"], 1, 1, True),
        ("vrf", ["ens4", "eth0"], 1, 1, True),  # a host interface keeps its name in vrf mode
        ("netns", ["ens4", "eth0"], 1, 1, False),  # ...and is renamed in a namespace
        ("netns", ["eth0"], 1, 1, False),
        ("netns", ["eth0", "up0"], 0, 1, False),
        ("netns", ["eth0", "up0"], 1, 0, False),
    ],
)
def test_converged(
    backend: vrfs.RealBackend, interfaces: list[str], installed: int, read_back: int, ready: bool
) -> None:
    desired = planning.DesiredVRF(
        name="red",
        table=1000,
        backend=backend,
        interfaces=(ETH0, HOST),
        routes=(ROUTE,),
    )
    observed = _observed(interfaces, read_back)
    status = vrfconverging.converged(desired, observed, installed=installed)
    assert status["ready"] is ready
    assert status["reason"] == (None if ready else Reason.NOT_CONVERGED)
    assert status["interfaces"] == interfaces
    assert observed["message"] == "observed"  # the read-back itself is left as it was


def test_kernel_routes_resolve_devices_and_refuse_a_missing_one() -> None:
    on_eth0 = planning.DesiredRoute(prefix="10.1.0.0/16", device="eth0", metric=5)
    desired = planning.DesiredVRF(name="red", table=7, backend="netns", routes=(ROUTE, on_eth0))
    got = vrfconverging.kernel_routes(desired, {"eth0": 3}.get)
    assert got == [
        routes.KernelRoute(dst="10.0.0.0/8", table=7, gateway="172.16.0.2"),
        routes.KernelRoute(dst="10.1.0.0/16", table=7, oif=3, priority=5),
    ]
    with pytest.raises(vrfconverging.RealizeError) as raised:
        vrfconverging.kernel_routes(desired, lambda device: None)
    assert raised.value.reason == Reason.DEVICE_MISSING
