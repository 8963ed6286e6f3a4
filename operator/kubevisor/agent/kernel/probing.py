"""What the node's kernel can do for VRFs, probed once by trying it in a scratch netns."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from kubevisor.agent.vrfs import specs


def kernel_has_l3mdev_vrf() -> bool:
    """Create a ``kind=vrf`` link in a throwaway namespace; True if the kernel accepts it.

    A scratch namespace keeps the probe from ever touching the node's own links, and
    loading the ``vrf`` module on demand (the kernel autoloads ``rtnl-link-vrf``) is part
    of what is being probed.
    """
    name = f"kvprobe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            try:
                ipr.link("add", ifname="kvprobe", kind="vrf", vrf_table=1000)
            except NetlinkError:
                return False
            return True
    finally:
        netns.remove(name)


def kernel_has_8021q() -> bool:
    """Create an 802.1Q VLAN link on a dummy-free base (a veth) in a throwaway namespace.

    True if the kernel accepts ``kind=vlan``; the CI kernel lacks it, and then a VRF
    interface with ``vlan`` is reported as BackendUnavailable instead of half-realized.
    """
    name = f"kvprobe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            try:
                ipr.link("add", ifname="kvprobe0", kind="veth", peer={"ifname": "kvprobe1"})
                base = ipr.link_lookup(ifname="kvprobe0")[0]
                ipr.link("add", ifname="kvprobe0.7", kind="vlan", link=base, vlan_id=7)
            except NetlinkError:
                return False
            return True
    finally:
        netns.remove(name)


@functools.cache
def cached_8021q() -> bool:
    """`kernel_has_8021q`, once per process."""
    return kernel_has_8021q()


@functools.cache
def _cached_probe() -> bool:
    return kernel_has_l3mdev_vrf()


def detect_backend(probe: Callable[[], bool] | None = None) -> specs.RealBackend:
    """``"vrf"`` where the kernel has l3mdev VRF, else ``"netns"``.

    The default probe runs once per process (kernels do not grow features while the agent
    runs); pass ``probe`` to inject a fact in tests. Blocking (pyroute2's sync API runs its
    own event loop): from async code call it through ``asyncio.to_thread``.
    """
    has_vrf = (probe or _cached_probe)()
    return "vrf" if has_vrf else "netns"
