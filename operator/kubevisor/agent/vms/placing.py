"""Host-side placement of a VM's NICs: which segment, bridge, tap and MAC each gets (pure).

The controller chose the node; this decides, from the node's network mapping
(``--network NAME[=BRIDGE]``), where on the node each NIC lands. A network the node
does not offer is a KeyError the handler turns into NetworkUnavailable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubevisor.agent import domainxml, segments
from kubevisor.api import machines, naming, virtualmachines

Phase = virtualmachines.VirtualMachinePhase
#: Desired states that want the domain up.
_WANTED_UP = frozenset({virtualmachines.DesiredState.RUNNING, virtualmachines.DesiredState.PAUSED})
#: Phases in which the VM may still use its NICs' segments (so they are not pruned).
_SEGMENTS_IN_USE = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.STOPPING, Phase.STARTING})


def nic_segments(
    machine: machines.MachineSpec,
    networks: dict[str, str],
    *,
    managed: frozenset[str] = frozenset(),
) -> list[segments.Segment]:
    """The segment of each NIC (pure). Raises KeyError for a network the node lacks."""
    return [segments.segment_of(nic.network, nic.vlan, networks, managed) for nic in machine.nics]


def nic_placements(
    machine: machines.MachineSpec,
    identity: domainxml.Identity,
    networks: dict[str, str],
    *,
    managed: frozenset[str] = frozenset(),
) -> tuple[domainxml.NICPlacement, ...]:
    """Tap, bridge and MAC of each NIC (pure)."""
    return tuple(
        domainxml.NICPlacement(
            name=nic.name,
            mac=(nic.mac or naming.mac(identity.uid, nic.name)).lower(),
            bridge=segment.bridge,
            tap=naming.tap(identity.uid, index),
            model=nic.model,
        )
        for index, (nic, segment) in enumerate(
            zip(machine.nics, nic_segments(machine, networks, managed=managed), strict=True)
        )
    )


def needed_segments(
    vms: Iterable[dict[str, Any]],
    networks: dict[str, str],
    *,
    managed: frozenset[str] = frozenset(),
) -> set[segments.Segment]:
    """Segments of the VMs (objects as watched) that are, or are to be, running (pure).
    A NIC on a network the node does not offer needs nothing here."""
    needed: set[segments.Segment] = set()
    for obj in vms:
        st = obj.get("status") or {}
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if st.get("desiredState") not in _WANTED_UP and st.get("phase") not in _SEGMENTS_IN_USE:
            continue
        for nic in (st.get("machine") or {}).get("nics") or []:
            network = nic.get("network")
            if network in networks:
                needed.add(segments.segment_of(network, nic.get("vlan"), networks, managed))
    return needed
