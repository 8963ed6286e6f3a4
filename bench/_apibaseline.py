"""The API baseline of bench/vm_start.py (issue 12): the writes a VM needs to reach
Running, issued by a plain client with the same concurrency and no operator, on the same
control plane before the operator starts. kubevisor's all-Running time is reported as a
ratio to this one, so "at the API server's pace" is a number of this run, not a guess.

Per VM, in order, the four writes a VM takes on this branch (the user's create, the
controller's placement status, its label + finalizers patch, the agent's Running status),
with the same field managers and content types, and each VM's writes one after another
(the next one of a VM needs the previous one, as in the product); ``concurrency`` threads
over the VMs. Templates are not read and nothing is placed: this is the API server's
part alone.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubevisor.api import groups

VM_PLURAL = "virtualmachines"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
WRITES_PER_VM = 4


def _status(name: str, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": namespace}, "status": status}  # fmt: skip


def one_vm(custom: Any, namespace: str, body: dict[str, Any], *, node: str) -> None:
    """The four writes of one VM."""
    g, v = groups.GROUP, groups.VERSION
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(g, v, namespace, VM_PLURAL, body)
    placed = {
        "nodeName": node, "desiredState": "Running", "observedGeneration": 1,
        "machine": {"cpu": {"cores": 1}, "memory": "64Mi", "disks": [], "nics": []},
        "conditions": [{"type": "Scheduled", "status": "True", "reason": "Scheduled",
                        "message": f"placed on node {node}", "observedGeneration": 1,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }  # fmt: skip
    custom.patch_namespaced_custom_object_status(
        g, v, namespace, VM_PLURAL, name, _status(name, namespace, placed),
        field_manager="kubevisor-controller", force=True, _content_type=APPLY,
    )  # fmt: skip
    custom.patch_namespaced_custom_object(
        g, v, namespace, VM_PLURAL, name,
        {"metadata": {"labels": {groups.LABEL_NODE: node},
                      "finalizers": [groups.FINALIZER, groups.AGENT_FINALIZER]}},
        _content_type=MERGE,
    )  # fmt: skip
    custom.patch_namespaced_custom_object_status(
        g, v, namespace, VM_PLURAL, name,
        _status(name, namespace, {"phase": "Running", "runningAt": "2026-01-01T00:00:00Z"}),
        field_manager="kubevisor-agent", force=True, _content_type=APPLY,
    )  # fmt: skip


def measure(
    api: Any, namespace: str, bodies: list[dict[str, Any]], *, concurrency: int, nodes: list[str]
) -> dict[str, Any]:
    """Seconds from the first create to the last VM's Running write, and per VM."""
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api)
    per_vm: list[float] = []
    t0 = time.monotonic()

    def run(i: int, body: dict[str, Any]) -> None:
        start = time.monotonic()
        one_vm(custom, namespace, body, node=nodes[i % len(nodes)])
        per_vm.append(time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(run, i, b) for i, b in enumerate(bodies)]:
            f.result()
    return {"all_done_s": round(time.monotonic() - t0, 3), "per_vm_s": per_vm,
            "writes": WRITES_PER_VM * len(bodies), "concurrency": concurrency}  # fmt: skip


def clean(api: Any, namespace: str) -> None:
    """Drop the finalizers the baseline put on, so the VMs can be deleted (untimed)."""
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api)
    g, v = groups.GROUP, groups.VERSION
    for obj in custom.list_namespaced_custom_object(g, v, namespace, VM_PLURAL)["items"]:
        custom.patch_namespaced_custom_object(
            g, v, namespace, VM_PLURAL, obj["metadata"]["name"], {"metadata": {"finalizers": None}}
        )
