"""MAC collisions across VMs: only the controller sees every VM, so it judges them. Pure.

Two guests answering with one MAC on one segment (network + VLAN) break each other's
traffic, and nothing in one object's schema can see the other object. The later VM (by
creationTimestamp, then namespace/name) is kept off a node with reason MACConflict naming
the earlier one; a VM already placed is never taken off its node by this rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubevisor.api import machines

Key = tuple[str, str]
Port = tuple[str, int | None, str]
"""(network, vlan, mac lower-case): one address on one segment."""


@dataclass(frozen=True)
class Seen:
    """What the rule needs of one VM: its age order and the MACs its recorded machine uses."""

    key: Key
    created: str
    ports: frozenset[Port]

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.key[0], self.key[1])


def seen(obj: Mapping[str, Any]) -> Seen:
    """From a VM object: the NICs of ``status.machine`` (MACs filled in by the controller)."""
    meta = obj.get("metadata") or {}
    machine = (obj.get("status") or {}).get("machine") or {}
    ports = frozenset(
        (str(n.get("network")), n.get("vlan"), str(n["mac"]).lower())
        for n in machine.get("nics") or []
        if n.get("mac")
    )
    return Seen(
        (str(meta.get("namespace")), str(meta.get("name"))),
        str(meta.get("creationTimestamp") or ""),
        ports,
    )


def ports(machine: machines.MachineSpec | None) -> frozenset[Port]:
    """The (network, vlan, mac) of a resolved machine's NICs (MACs filled in)."""
    if machine is None:
        return frozenset()
    return frozenset(
        (nic.network, nic.vlan, nic.mac.lower()) for nic in machine.nics or [] if nic.mac
    )


def conflict(me: Seen, others: Iterable[Seen]) -> str | None:
    """A sentence naming the earlier VM using one of ``me``'s MACs on the same segment,
    or None."""
    for other in sorted(others, key=lambda s: s.order):
        if other.key == me.key or other.order >= me.order:
            continue
        shared = sorted(me.ports & other.ports, key=lambda p: (p[0], p[1] or 0, p[2]))
        if shared:
            network, vlan, mac = shared[0]
            segment = network if vlan is None else f"{network} VLAN {vlan}"
            return (
                f"MAC {mac} on segment {segment} is already used by VirtualMachine "
                f"{other.key[0]}/{other.key[1]}; give this NIC another mac."
            )
    return None
