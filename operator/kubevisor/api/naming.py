"""Names derived from a VM's identity: NIC MACs, host tap names, libvirt domain names.

Derived by hashing rather than stored, so a restarted controller or agent, a re-resolve
after a template change, or another node (a migration target) all arrive at the same
name. The controller writes MACs into ``status.machine``; the agent names taps and
domains, and falls back to :func:`mac` for a NIC without one. Both import this module,
so there is one derivation per name (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
from typing import Final

#: First two octets of generated MACs: 0x52 has the locally-administered bit set and the
#: multicast bit clear, and 52:54 is the prefix QEMU users recognise.
MAC_PREFIX: Final = (0x52, 0x54)


def mac(uid: str, nic: str) -> str:
    """A stable MAC for NIC ``nic`` of the VM with ``uid``: ``52:54`` and the first four
    bytes of sha256(``<uid>/<nic>``).

    This is the address guests have always been given (the controller filled every NIC's
    MAC in ``status.machine`` with it), so existing VMs keep theirs. 32 hashed bits keep
    collisions unlikely well beyond a cluster's VM count.
    """
    digest = hashlib.sha256(f"{uid}/{nic}".encode()).digest()
    octets = (*MAC_PREFIX, *digest[:4])
    return ":".join(f"{o:02x}" for o in octets)


def tap(uid: str, index: int) -> str:
    """Host tap name for NIC ``index`` of a VM: ``kv<8 hex of sha256(uid)>n<index>``.

    Interface names are limited to 15 characters; a hash of the UID keeps names of two
    VMs apart, the index keeps a VM's NICs apart, and the name survives agent restarts.
    """
    digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
    return f"kv{digest}n{index}"


def domain_name(namespace: str, name: str) -> str:
    """The libvirt domain of a VM: ``<namespace>_<name>``, unique per cluster (neither
    part may contain ``_``) and readable in ``virsh list``."""
    return f"{namespace}_{name}"


def vm_of_domain(domain: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a domain named by :func:`domain_name`; None for a domain
    that is not (a name without ``_``)."""
    namespace, sep, name = domain.partition("_")
    return (namespace, name) if sep else None
