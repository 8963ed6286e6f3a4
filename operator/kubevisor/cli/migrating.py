"""``kubevisor migrate``, ``drain`` and ``uncordon``: live migration from a shell.

``migrate`` creates a Migration (built with the api models) and follows it until it ends:
phase changes, a progress line from ``status.progress`` (redrawn in place on a terminal,
one line per update otherwise), then the final figures; Ctrl-C asks the controller to
cancel (``spec.cancel``) and waits for the end. ``drain`` cordons the Node as
``kubectl cordon`` does (``spec.unschedulable``) and follows the drain's Migrations
until no VM that may move is left on the node, printing why the others stay (their
Evictable condition). ``uncordon`` undoes the cordon.

The rendering is pure (table-tested); the verbs are thin loops over the API.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from kubevisor.api import conditions, groups, kinds, migrations
from kubevisor.cli import following, rendering

MIGRATION = kinds.MIGRATION
VM = kinds.VIRTUALMACHINE
POLL_SECONDS = 0.5


class MigrateFailed(Exception):
    """The Migration ended without Succeeded (its reason and message)."""


def migration_body(
    vm: str, namespace: str, *, target: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """The Migration to create (pure but for the generated name suffix)."""
    spec = migrations.MigrationSpec(vm_name=vm, target_node=target)
    return {
        "apiVersion": groups.API_VERSION,
        "kind": MIGRATION.kind,
        "metadata": {"name": name or f"{vm}-{secrets.token_hex(3)}", "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**2:.0f} MiB"


def progress_line(progress: Mapping[str, Any], *, width: int = 30) -> str:
    """``[#####.....]  42%  37/88 MiB  12 MiB/s  ETA 4 s`` from ``status.progress`` (pure)."""
    p = migrations.MigrationProgress.model_validate(progress)
    parts = [following.bar(p.percent, width=width)]
    if p.data_processed_bytes is not None and p.data_total_bytes:
        done, total = p.data_processed_bytes / 1024**2, p.data_total_bytes / 1024**2
        parts.append(f"{done:.0f}/{total:.0f} MiB")
    if p.transfer_rate_bytes_per_second:
        parts.append(f"{p.transfer_rate_bytes_per_second / 1024**2:.0f} MiB/s")
    if p.eta_seconds is not None:
        parts.append(f"ETA {p.eta_seconds} s")
    if p.memory_iterations:
        parts.append(f"iteration {p.memory_iterations}")
    return "  ".join(parts)


def figures(status: Mapping[str, Any]) -> str:
    """The final figures of a finished Migration (pure)."""
    parts = [f"{status.get('phase')}: {status.get('sourceNode')} -> {status.get('targetNode')}"]
    for label, key, unit in (("total", "totalTimeMs", "ms"), ("downtime", "downtimeMs", "ms")):
        if status.get(key) is not None:
            parts.append(f"{label} {status[key]} {unit}")
    if status.get("bytesTransferred") is not None:
        parts.append(f"moved {_mib(status['bytesTransferred'])}")
    if status.get("mode"):
        parts.append(f"mode {status['mode']}")
    return ", ".join(parts)


def why(status: Mapping[str, Any]) -> str:
    """``reason: message`` of the condition that explains the state (pure): Ready once
    the phase moved on, Scheduled while Pending."""
    listed = list(status.get("conditions") or [])
    phase = status.get("phase") or migrations.MigrationPhase.PENDING.value
    order = ("Scheduled", "Ready") if phase == "Pending" else ("Ready", "Scheduled")
    for type_ in order:
        cond = conditions.get_condition(listed, type_)
        if cond is not None and cond.get("reason"):
            return f"{cond['reason']}: {cond.get('message') or ''}".rstrip(": ")
    return str(phase)


def follow(
    get: Callable[[], Mapping[str, Any] | None],
    *,
    out: TextIO,
    tty: bool,
    cancel: Callable[[], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """Poll the Migration until it ends; the final status. Ctrl-C cancels it once and
    keeps following (the VM stays on its source)."""
    shown = following.Follower(out, tty=tty, why=why, progress_line=progress_line)
    cancelled = False
    while True:
        try:
            obj = get()
            if obj is None:
                raise MigrateFailed("the Migration was deleted")
            status = obj.get("status") or {}
            shown.show(status)
            if status.get("phase") in {p.value for p in migrations.FINAL_PHASES}:
                shown.end_line()
                return status
            sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if cancelled:
                raise
            cancelled = True
            print("\ncancelling (spec.cancel=true); waiting for the end", file=out)
            cancel()


def migrate(
    api: Any,
    vm: str,
    namespace: str,
    *,
    target: str | None,
    wait: bool,
    out: TextIO = sys.stdout,
) -> rendering.Done:
    """Create the Migration and (with ``wait``) follow it, progress on ``out``; the
    Migration as it ended and its final figures."""
    body = migration_body(vm, namespace, target=target)
    name = body["metadata"]["name"]
    created: Mapping[str, Any] = api.create_namespaced_custom_object(
        groups.GROUP, groups.VERSION, namespace, MIGRATION.plural, body
    )
    if not wait:
        return rendering.Done(created, f"migration/{name} created")
    print(f"migration/{name} created", file=out, flush=True)

    def get() -> Mapping[str, Any] | None:
        obj: Mapping[str, Any] = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, MIGRATION.plural, name
        )
        return obj

    def cancel() -> None:
        api.patch_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, MIGRATION.plural, name,
            {"spec": {"cancel": True}},
        )  # fmt: skip

    status = follow(get, out=out, tty=out.isatty(), cancel=cancel)
    if status.get("phase") != migrations.MigrationPhase.SUCCEEDED.value:
        raise MigrateFailed(f"{status.get('phase')}: {why(status)}")
    # the figures follow Succeeded (the target reports libvirt's completed job)
    last = get() or created
    for _ in range(20):
        if status.get("totalTimeMs") is not None:
            break
        time.sleep(POLL_SECONDS)
        last = get() or last
        status = last.get("status") or status
    return rendering.Done(last, figures(status))


def cordon(core: Any, node: str, *, unschedulable: bool) -> Any:
    """``kubectl cordon``/``uncordon``: the Node's ``spec.unschedulable``; the Node."""
    return core.patch_node(node, {"spec": {"unschedulable": unschedulable}})


def drain_state(vms: list[Mapping[str, Any]], node: str) -> tuple[list[str], list[str]]:
    """VMs still on ``node`` that are moving, and ``name: reason: message`` of those that
    stay (Evictable=False) (pure)."""
    moving: list[str] = []
    staying: list[str] = []
    for vm in vms:
        st = vm.get("status") or {}
        if st.get("nodeName") != node:
            continue
        name = f"{vm['metadata']['namespace']}/{vm['metadata']['name']}"
        cond = conditions.get_condition(list(st.get("conditions") or []), "Evictable")
        if cond is not None and cond.get("status") == "False":
            staying.append(f"{name}: {cond.get('reason')}: {cond.get('message')}")
        else:
            moving.append(name)
    return moving, staying


def drain(
    api: Any, core: Any, node: str, *, timeout: float, out: TextIO = sys.stdout
) -> rendering.Done:
    """Cordon ``node`` and wait until every VM that may move has left it, progress on
    ``out``; the Node and the VMs it held, as they are at the end."""
    cordoned = cordon(core, node, unschedulable=True)
    print(f"node/{node} cordoned", file=out, flush=True)
    deadline = time.monotonic() + timeout
    last: tuple[list[str], list[str]] | None = None
    held: set[tuple[str, str]] = set()
    while True:
        items = api.list_cluster_custom_object(groups.GROUP, groups.VERSION, VM.plural)["items"]
        held |= {_key(vm) for vm in items if (vm.get("status") or {}).get("nodeName") == node}
        state = drain_state(items, node)
        if state != last:
            moving, staying = state
            if moving:
                print(f"  moving: {', '.join(moving)}", file=out, flush=True)
            last = state
        if not state[0]:
            break
        if time.monotonic() > deadline:
            raise MigrateFailed(f"still on {node} after {timeout:.0f} s: {', '.join(state[0])}")
        time.sleep(POLL_SECONDS)
    staying = state[1]
    summary = f"node/{node} drained"
    if staying:
        summary += "; staying:\n  " + "\n  ".join(staying)
    node_obj = {"apiVersion": "v1", "kind": "Node",
                **core.api_client.sanitize_for_serialization(cordoned)}  # fmt: skip
    vms = [vm for vm in items if _key(vm) in held]
    return rendering.Done([node_obj, *vms], summary)


def _key(vm: Mapping[str, Any]) -> tuple[str, str]:
    return vm["metadata"]["namespace"], vm["metadata"]["name"]
