"""VMs the hypervisor (or the node) refuses reach a truthful status, on real libvirtd and
QEMU (issue 9, class 1).

Each VM below is accepted by the API server and cannot run on this node. For each: a
phase and ``Ready=False`` with a specific reason and the underlying words, a Warning
Event with that reason, retries that back off (the second attempt's wait is longer than
the first's: the kubelet's CrashLoopBackOff shape, read from the agent's own log line,
not from a clock), at most two attempts by the time the second is seen (no retry storm),
and no traceback in any log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import nodes as api_nodes
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvtruth"
NS = "default"
DEADLINE_S = 120.0

#: name -> (VM spec fields over the tiny template, the reasons a truthful status may give)
CASES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "bad-kernel": (
        {"boot": {"kernel": "/nonexistent/vmlinuz", "initrd": "/nonexistent/initrd.img"}},
        {"HypervisorRefused", "ImageNotFound"},
    ),
    "bad-cpu": (
        {"cpu": {"cores": 1, "model": "no-such-cpu-model"}},
        {"HypervisorRefused"},
    ),
    "bad-firmware": ({"boot": {"firmware": "uefi"}}, {"FirmwareUnavailable"}),
    "bad-secret": (
        {"display": {"vnc": True, "passwordSecretRef": {"name": "no-such-secret", "key": "pw"}}},
        {"SecretNotFound"},
    ),
}
#: Reasons the agent meets (it retries them with backoff); the controller's are level.
AGENT_REASONS = {"HypervisorRefused", "ImageNotFound", "FirmwareUnavailable", "SecretNotFound"}


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    testing.require_root("a dev cluster (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "nsenter")
    testing.require_tiny_guest(devcluster.GUEST_CACHE)
    if Path("/usr/share/OVMF").exists():
        CASES.pop("bad-firmware")  # this node has UEFI firmware: that VM is not refused
    try:
        dev = devcluster.up(CLUSTER, nodes_count=1, stop_timeout=5.0, agent_args=("--cpu=8",))
    except BaseException:
        devcluster.down(CLUSTER)
        raise
    try:
        # a VM applied before the agent's Lease exists is (rightly) Unschedulable
        testing.wait_for(
            lambda: dev.run_kubectl("get", "leases", "-n", api_nodes.LEASE_NAMESPACE,
                             "-l", api_nodes.AGENT_SELECTOR, "-o", "name").strip(),
            timeout=DEADLINE_S, what="the agent's Lease",
        )  # fmt: skip
        dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
        yield dev
    finally:
        devcluster.down(CLUSTER)


def _status(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    out = dev.run_kubectl("get", "virtualmachine", name, "-o", "yaml")
    return (yaml.safe_load(out) or {}).get("status") or {}


def _ready(dev: devcluster.DevCluster, name: str, reasons: set[str]) -> dict[str, Any] | None:
    """The Ready condition once it is False with one of ``reasons`` (before that it may
    pass through Pending or Starting while the node works)."""
    st = _status(dev, name)
    cond = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
    if cond is None or cond["status"] != "False" or cond.get("reason") not in reasons:
        return None
    return {**cond, "phase": st.get("phase")}


def _attempts(dev: devcluster.DevCluster, name: str) -> list[float]:
    """The retry waits the agent logged for ``name``'s refusals, in order."""
    text = dev.log(f"agent-{dev.nodes[0].name}").read_text(errors="replace")
    line = re.compile(rf"{NS}/{re.escape(name)}: \w+: .*; retrying in (\d+)s$", re.M)
    return [float(m.group(1)) for m in line.finditer(text)]


@pytest.mark.parametrize("name", list(CASES))
def test_a_refused_vm_says_why_and_backs_off(dev: devcluster.DevCluster, name: str) -> None:
    if name not in CASES:
        pytest.skip("this node has UEFI firmware (OVMF): a uefi VM is not refused here")
    fields, reasons = CASES[name]
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    spec: dict[str, Any] = {"runStrategy": "Always", "templateRef": {"name": "tiny"}, **fields}
    if "boot" in fields:
        spec["boot"] = {**template["spec"]["boot"], **fields["boot"]}
    body = {"apiVersion": "kubevisor.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    try:
        _check(dev, name, reasons)
    finally:
        dev.run_kubectl("delete", "virtualmachine", name, "--wait=true", "--timeout=60s")


def _check(dev: devcluster.DevCluster, name: str, reasons: set[str]) -> None:
    ready = testing.wait_for(lambda: _ready(dev, name, reasons), timeout=DEADLINE_S,
                             what=f"{name} Ready=False with one of {sorted(reasons)}",
                             show=lambda: _status(dev, name))  # fmt: skip
    print(f"\n{name}: phase {ready['phase']}, {ready['reason']}: {ready['message']}")
    assert ready["reason"] in reasons, ready
    assert ready["phase"], "a refused VM still has a phase"
    assert len(ready.get("message") or "") > 10, ready
    events = testing.wait_for(
        lambda: [e for e in yaml.safe_load(dev.run_kubectl(
            "get", "events", "-o", "yaml",
            f"--field-selector=involvedObject.name={name},reason={ready['reason']}"))["items"]],
        timeout=60, what=f"a {ready['reason']} Event on {name}",
    )  # fmt: skip
    assert events[0]["type"] == "Warning", events[0]
    if ready["reason"] in AGENT_REASONS:
        waits = testing.wait_for(
            lambda: w if len(w := _attempts(dev, name)) >= 2 else None,
            timeout=DEADLINE_S,
            what=f"the agent's second attempt at {name}",
            show=lambda: _attempts(dev, name),
        )
        print(f"{name}: retry waits {waits}")
        text = dev.log(f"agent-{dev.nodes[0].name}").read_text(errors="replace")
        mine = "\n".join(line for line in text.splitlines() if f"/{name}" in line)
        assert len(waits) == 2, f"no retry storm: {waits}\n{mine}"
        assert waits[1] > waits[0] >= 10, f"backoff doubles from 10 s: {waits}\n{mine}"


def test_no_traceback_in_any_log(dev: devcluster.DevCluster) -> None:
    logs = sorted(dev.log("controller").parent.glob("*.log"))
    assert logs, "the cluster keeps logs"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, (
            f"{log.name}:\n{text[text.index('Traceback') - 500 :][:3000]}"
        )
