"""What the end-to-end tests do to a dev cluster, written once: read an object as kubectl
shows it, boot a VM from the tiny template that prints ticks and wait until it ticks,
(whether a node's libvirtd serves: ``nodepower.serving``; which domains run on a node:
``copies.running``).

Why in devenv (not a test module): the migration, rebalancing and hypervisor-reconnect
e2e modules all do these steps, and a copy per module drifted (one waited for ticks, one
did not); benchmarks use the same steps. Everything goes through kubectl and virsh, as a
user would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, testing

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "docs/examples/vmtemplate.yaml"
"""The tiny VMTemplate every e2e VM is made from (apply it once per cluster)."""
NS = "default"
BOOT_S = 240.0
"""Seconds a tiny TCG guest may take to run and print its first ticks on a busy machine."""


def poll(
    what: str, check: Callable[[], Any], *, limit: float, show: Any = None, every: float = 0.5
) -> Any:
    """``testing.wait_for`` with the e2e defaults."""
    return testing.wait_for(check, timeout=limit, what=what, every=every, show=show)


def get(dev: devcluster.DevCluster, kind: str, name: str, *, ns: str = NS) -> dict[str, Any] | None:
    """The object as ``kubectl get -o yaml`` shows it, or None (absent, or kubectl failed)."""
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", kind, name,
         "-n", ns, "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def status(dev: devcluster.DevCluster, kind: str, name: str, *, ns: str = NS) -> dict[str, Any]:
    """The object's status ({} when absent)."""
    return (get(dev, kind, name, ns=ns) or {}).get("status") or {}


def condition(
    dev: devcluster.DevCluster, kind: str, name: str, type_: str, *, ns: str = NS
) -> dict[str, Any] | None:
    """One condition of the object's status, or None."""
    for c in status(dev, kind, name, ns=ns).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def vm_body(
    name: str,
    *,
    ip: str | None = None,
    script: str = guest.TICKER_SCRIPT,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A VirtualMachine from the tiny template whose guest runs ``script`` (pure apart
    from reading the template)."""
    template = yaml.safe_load(TEMPLATE.read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    return {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "templateRef": {"name": "tiny"},
            "boot": {**boot, "cmdline": guest.kernel_cmdline(ip=ip, script=script)},
            **(extra or {}),
        },
    }


def boot(
    dev: devcluster.DevCluster,
    name: str,
    *,
    ip: str | None = None,
    script: str = guest.TICKER_SCRIPT,
    extra: dict[str, Any] | None = None,
    limit: float = BOOT_S,
) -> dict[str, Any]:
    """Create the VM (:func:`vm_body`), wait until it is Running and its console shows
    two ticks; its status then."""
    body = vm_body(name, ip=ip, script=script, extra=extra)
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    st: dict[str, Any] = poll(
        f"{name} Running",
        lambda: (s := status(dev, "virtualmachine", name)).get("phase") == "Running" and s,
        limit=limit,
        show=lambda: status(dev, "virtualmachine", name),
    )
    console = Path(st["consoleLog"])
    poll(f"{name} ticking", lambda: console.exists() and guest.console_mark(console).tick >= 2,
         limit=limit)  # fmt: skip
    return st
