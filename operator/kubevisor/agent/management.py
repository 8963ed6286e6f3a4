"""The node's management interface (the seed's dedicated management NIC): migration
streams to this node and its libvirtd are reached on its address, the VMs' LANs never.

:func:`address` is the pure rule an agent starts by: the interface must exist, carry an
IPv4 address, and be neither the bridge of a VM network nor a port of one — else the
management traffic would share a LAN with guests, which is what the interface is for
avoiding. The agent refuses to start with the sentence this raises.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubevisor.agent.kernel.interfaces import Interface


class ManagementError(ValueError):
    """The named management interface cannot be one (the message says why)."""


def address(name: str, found: Interface | None, networks: Mapping[str, str]) -> str:
    """The management address of interface ``name`` (pure). ``networks``: VM network name
    -> bridge on this node."""
    if found is None:
        raise ManagementError(f"management interface {name!r} does not exist on this node")
    by_bridge = {bridge: net for net, bridge in networks.items()}
    if name in by_bridge:
        raise ManagementError(
            f"management interface {name!r} is the bridge of VM network "
            f"{by_bridge[name]!r}: guests would share its LAN"
        )
    if found.master is not None and found.master in by_bridge:
        raise ManagementError(
            f"management interface {name!r} is a port of bridge {found.master!r}, which "
            f"carries VM network {by_bridge[found.master]!r}: guests would share its LAN"
        )
    if not found.ipv4:
        raise ManagementError(f"management interface {name!r} has no IPv4 address")
    return found.ipv4[0]
