"""The agent's only contact with libvirt (the one place ``import libvirt`` is allowed).

A thin async adapter: every blocking libvirt call runs on a small dedicated thread pool,
results come back as plain frozen dataclasses, errors as :class:`HypervisorError`. See
:mod:`kubevisor.agent.libvirt.hypervisor`.
"""

from kubevisor.agent.libvirt.hypervisor import (
    DomainEvent,
    DomainInfo,
    DomainState,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    NoSuchDomain,
)

__all__ = [
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "Hypervisor",
    "HypervisorError",
    "HypervisorUnavailable",
    "NoSuchDomain",
]
