"""The agent outlives its libvirtd (issue 14): a simulated node's libvirtd is stopped and
started again under a running agent, as a woken node's or an upgraded libvirtd is. Real
TCG guest, real libvirtd, real API server and controller.

While libvirtd is gone the VM says so (phase Unknown, Ready=False with reason
HypervisorUnavailable) and the guest keeps running (QEMU does not depend on libvirtd).
When libvirtd is back, the same agent process (never restarted) reconnects, adopts the
running domain and reports the VM Running again, without rebooting the guest; a VM
created meanwhile starts on the new libvirtd too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import copies, guest, nodepower, testing, vmops

pytestmark = pytest.mark.e2e

CLUSTER = "kvhvrec"
NS = vmops.NS
#: The agent looks at every VM at once when the connection drops (and every 15 s).
UNAVAILABLE_S = 60.0
#: Reconnect backoff caps at 10 s; the pass after it adopts the domain.
BACK_S = 90.0


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=1, stop_timeout=5.0, power_switch=False) as dev:
        dev.run_kubectl("apply", "-f", str(vmops.TEMPLATE))
        yield dev


def _ready(dev: devcluster.DevCluster, name: str) -> dict[str, object]:
    return vmops.condition(dev, "virtualmachine", name, "Ready") or {}


def test_agent_reconnects_to_a_restarted_libvirtd_and_reports_the_vm_again(
    dev: devcluster.DevCluster,
) -> None:
    (node,) = dev.nodes
    agent = dev.pids[f"agent-{node.name}"]
    try:
        st = vmops.boot(dev, "hv-a")
        console = Path(st["consoleLog"])
        mark = guest.console_mark(console)
        domain_uuid = st["domainUUID"]

        nodepower.stop_libvirtd(node)
        assert not nodepower.serving(node)
        down = vmops.poll(
            "hv-a reported Unknown, HypervisorUnavailable",
            lambda: (
                (s := vmops.status(dev, "virtualmachine", "hv-a")).get("phase") == "Unknown"
                and _ready(dev, "hv-a").get("reason") == "HypervisorUnavailable"
                and s
            ),
            limit=UNAVAILABLE_S,
            show=lambda: vmops.status(dev, "virtualmachine", "hv-a"),
        )
        print(f"\nwhile libvirtd is down: {_ready(dev, 'hv-a').get('message')}")
        assert down["domainUUID"] == domain_uuid  # what was known is kept
        vmops.poll("the guest keeps ticking without libvirtd",
                   lambda: guest.kept_running(console, mark), limit=60)  # fmt: skip
        # A VM created while libvirtd is gone waits; it is not refused.
        dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(vmops.vm_body("hv-b")))

        nodepower.start_libvirtd(node)
        vmops.poll(
            "hv-a Running again",
            lambda: (
                vmops.status(dev, "virtualmachine", "hv-a").get("phase") == "Running"
                and _ready(dev, "hv-a").get("status") == "True"
            ),
            limit=BACK_S,
            show=lambda: vmops.status(dev, "virtualmachine", "hv-a"),
        )
        after = vmops.status(dev, "virtualmachine", "hv-a")
        assert after["domainUUID"] == domain_uuid
        assert after["startedAt"] == st["startedAt"], "the domain was started again"
        assert guest.kept_running(console, mark), "the guest booted again"
        assert f"{NS}_hv-a" in copies.running(node)
        vmops.poll(
            "hv-b Running on the new libvirtd",
            lambda: vmops.status(dev, "virtualmachine", "hv-b").get("phase") == "Running",
            limit=vmops.BOOT_S,
            show=lambda: vmops.status(dev, "virtualmachine", "hv-b"),
        )
        assert dev.pids[f"agent-{node.name}"] == agent
        assert not devcluster.gone(agent), "the agent exited"
        log = dev.log(f"agent-{node.name}").read_text(errors="replace")
        assert "lost the connection to" in log and "reconnected to" in log
    finally:
        nodepower.start_libvirtd(node)
        dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")
