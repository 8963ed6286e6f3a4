"""The management interface rule an agent starts by (pure, table test)."""

from __future__ import annotations

import pytest

from kubevisor.agent import management
from kubevisor.agent.kernel.interfaces import Interface

pytestmark = pytest.mark.unit

NETWORKS = {"default": "kvbr0", "red": "kvn-red"}


@pytest.mark.parametrize(
    ("found", "answer"),
    [
        (Interface("mgmt0", ("10.78.0.11",), False, None), "10.78.0.11"),
        (Interface("mgmt0", ("10.78.0.11", "10.78.0.99"), False, "mgmtbr"), "10.78.0.11"),
        (None, "does not exist on this node"),
        (Interface("mgmt0", (), False, None), "has no IPv4 address"),
        (Interface("mgmt0", ("10.77.0.11",), False, "kvbr0"),
         "is a port of bridge 'kvbr0', which carries VM network 'default'"),
    ],
    ids=["own-link", "first-address-and-own-bridge", "missing", "no-address", "port-of-vm-lan"],
)  # fmt: skip
def test_management_address(found: Interface | None, answer: str) -> None:
    if answer[0].isdigit():
        assert management.address("mgmt0", found, NETWORKS) == answer
    else:
        with pytest.raises(management.ManagementError, match=answer):
            management.address("mgmt0", found, NETWORKS)


def test_a_vm_networks_bridge_is_never_the_management_interface() -> None:
    with pytest.raises(management.ManagementError, match="bridge of VM network 'red'"):
        management.address("kvn-red", Interface("kvn-red", ("10.1.0.1",), True, None), NETWORKS)
