"""Real agents on two simulated nodes report what migration's preconditions need: each
node's Lease names the other in ``kubevisor.io/rtts`` with a positive round trip (a TCP
connect to the peer's libvirtd), and its capacity lists the CPU models libvirt runs there;
the controller's pure precondition check then finds the RTT known and the CPU runnable."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from kubevisor.api import machines, nodes
from kubevisor.controller.migrations import preconditions
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import testing

pytestmark = pytest.mark.e2e

CLUSTER = "kvrtt"


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(
        CLUSTER,
        nodes_count=2,
        controller=False,
        agent_args=["--rtt-probe-seconds", "1"],
        guest=False,
    ) as dev:
        yield dev


def _leases(dev: devcluster.DevCluster) -> dict[str, nodes.NodeLease]:
    out = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", "leases",
         "-n", nodes.LEASE_NAMESPACE, "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    parsed = (nodes.parse(item) for item in json.loads(out)["items"])
    return {lease.name: lease for lease in parsed}


def test_each_lease_carries_rtt_to_the_other_node_and_cpu_models(
    dev: devcluster.DevCluster,
) -> None:
    names = [n.name for n in dev.nodes]

    def reported() -> dict[str, nodes.NodeLease] | None:
        leases = _leases(dev)
        for me, peer in ((names[0], names[1]), (names[1], names[0])):
            lease = leases.get(me)
            if lease is None or peer not in lease.rtts_ms:
                return None
        return leases

    leases = testing.wait_for(reported, timeout=60.0, what="both Leases report peer RTTs")
    for me, peer in ((names[0], names[1]), (names[1], names[0])):
        lease = leases[me]
        caps = lease.capacity
        print(f"{me}: rtt to {peer} {lease.rtts_ms[peer]} ms, {len(caps.cpu_models)} cpu models")
        assert lease.rtts_ms[peer] > 0
        assert lease.capacity.cpu_models, f"{me} reports no CPU models"

    source, target = leases[names[0]], leases[names[1]]
    assert preconditions.measured_rtt_ms(source, target) is not None
    model = target.capacity.cpu_models[0]
    runnable = machines.CPU(model=model)
    assert preconditions.cpu_refusal(runnable, source=source, target=target) is None
    assert (
        preconditions.cpu_refusal(machines.CPU(model="no-such-cpu"), source=source, target=target)
        is not None
    )
