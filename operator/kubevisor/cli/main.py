"""``kubevisor`` (also ``kubectl kubevisor``): operate VirtualMachines from a shell.

Every verb is an ordinary API write the controller reacts to, so nothing here bypasses
the controller: start/stop patch ``spec.runStrategy`` (or, for runStrategy Manual, the
``kubevisor.io/power`` annotation), restart sets a new ``kubevisor.io/restart`` token,
pause/unpause set or remove ``kubevisor.io/paused``.

Examples::

    kubevisor list -n default
    kubevisor restart web -n default
    kubectl kubevisor console web
    kubevisor migrate web --to node-2      # live migration, with a progress bar
    kubevisor drain node-1                 # cordon, and wait until its VMs moved away
    kubevisor uncordon node-1
    kubevisor backup web                   # live backup, with a progress bar
    kubevisor restore web-3f2a1c --as web-restored
    kubevisor restore web-3f2a1c --in-place web
    kubevisor desktop claim office --user alice   # prints the desktop's browser URL

``migrate``, ``drain`` and ``uncordon`` are in :mod:`kubevisor.cli.migrating`; ``backup``
and ``restore`` in :mod:`kubevisor.cli.backingup`; ``desktop claim`` in
:mod:`kubevisor.cli.desktops`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kubevisor.api import groups, kinds, virtualmachines, vmbackups
from kubevisor.api.virtualmachines import DesiredState, RunStrategy
from kubevisor.cli import backingup, desktops, migrating

ANNOTATION_PAUSED = groups.ANNOTATION_PAUSED
ANNOTATION_POWER = groups.ANNOTATION_POWER


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


def new_token() -> str:
    """A fresh restart token (no '#': the controller appends '#<n>' to its own)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def power_patch(verb: str, vm: dict[str, Any]) -> dict[str, Any]:
    """The merge patch a verb amounts to for this VM (pure; see the module docstring)."""
    spec = vm.get("spec") or {}
    status = vm.get("status") or {}
    strategy = spec.get("runStrategy", RunStrategy.ALWAYS)
    name = vm["metadata"]["name"]
    stopped = (
        status.get("phase") in virtualmachines.GUEST_STOPPED
        or status.get("desiredState") == DesiredState.STOPPED
    )
    if verb == "start":
        if strategy == RunStrategy.HALTED:
            return {"spec": {"runStrategy": RunStrategy.ALWAYS.value}}
        notes: dict[str, Any] = {}
        if strategy == RunStrategy.MANUAL:
            notes[ANNOTATION_POWER] = DesiredState.RUNNING.value
            if status.get("phase") in virtualmachines.GUEST_STOPPED:
                notes[groups.ANNOTATION_RESTART] = new_token()
        elif stopped:
            notes[groups.ANNOTATION_RESTART] = new_token()
        else:
            raise CLIError(f"{name} is already running (runStrategy {strategy})")
        return {"metadata": {"annotations": notes}}
    if verb == "stop":
        if strategy == RunStrategy.MANUAL:
            return {"metadata": {"annotations": {ANNOTATION_POWER: DesiredState.STOPPED.value}}}
        if strategy == RunStrategy.HALTED:
            raise CLIError(f"{name} is already stopped (runStrategy Halted)")
        return {"spec": {"runStrategy": RunStrategy.HALTED.value}}
    if verb == "restart":
        return {"metadata": {"annotations": {groups.ANNOTATION_RESTART: new_token()}}}
    if verb == "pause":
        return {"metadata": {"annotations": {ANNOTATION_PAUSED: "true"}}}
    if verb == "unpause":
        return {"metadata": {"annotations": {ANNOTATION_PAUSED: None}}}
    raise CLIError(f"unknown verb {verb}")


def row(vm: dict[str, Any]) -> list[str]:
    """One line of ``list``: name, phase, desired state, node, first IP, strategy."""
    st = vm.get("status") or {}
    ifaces = st.get("interfaces") or [{}]
    return [
        vm["metadata"]["name"],
        str(st.get("phase") or "-"),
        str(st.get("desiredState") or "-"),
        str(st.get("nodeName") or "-"),
        str(ifaces[0].get("ipAddress") or "-"),
        str((vm.get("spec") or {}).get("runStrategy") or "Always"),
    ]


def table(rows: list[list[str]]) -> str:
    header = ["NAME", "PHASE", "DESIRED", "NODE", "IP", "STRATEGY"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def describe(vm: dict[str, Any]) -> str:
    """``get``: the list row plus conditions and machine summary."""
    st = vm.get("status") or {}
    lines = [table([row(vm)]), ""]
    machine = st.get("machine") or {}
    if machine:
        nics = ", ".join(f"{n['name']}={n.get('mac')}" for n in machine.get("nics") or [])
        lines.append(
            f"machine: {machine.get('cpu', {}).get('cores')} vCPU, {machine.get('memory')},"
            f" nics: {nics or '-'}"
        )
    for c in st.get("conditions") or []:
        lines.append(f"{c['type']}={c['status']} ({c['reason']}) {c.get('message', '')}".rstrip())
    return "\n".join(lines)


def _client(kubeconfig: str | None) -> Any:
    import kubernetes

    if (
        not kubeconfig
        and not os.environ.get("KUBECONFIG")
        and os.environ.get("KUBERNETES_SERVICE_HOST")
    ):
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return kubernetes.client.CustomObjectsApi()


def run(args: argparse.Namespace) -> str:
    import kubernetes

    api = _client(args.kubeconfig)
    if args.verb in ("drain", "uncordon"):
        core = kubernetes.client.CoreV1Api()
        try:
            if args.verb == "uncordon":
                migrating.cordon(core, args.node, unschedulable=False)
                return f"node/{args.node} uncordoned"
            return migrating.drain(api, core, args.node, timeout=args.timeout)
        except migrating.MigrateFailed as exc:
            raise CLIError(str(exc)) from exc
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise CLIError(f"Node {args.node!r} not found") from exc
            raise CLIError(f"API error {exc.status}: {exc.reason}") from exc
    ns = args.namespace
    if args.verb == "desktop":
        try:
            return desktops.claim(
                api, args.pool, ns, user=args.user, groups_=args.group, shadow=args.shadow,
                name=args.name, timeout=args.timeout,
            )  # fmt: skip
        except desktops.ClaimFailed as exc:
            raise CLIError(str(exc)) from exc
        except kubernetes.client.ApiException as exc:
            raise CLIError(f"API error {exc.status}: {exc.reason}: {exc.body}") from exc
    try:
        if args.verb == "migrate":
            try:
                return migrating.migrate(api, args.name, ns, target=args.to, wait=not args.no_wait)
            except migrating.MigrateFailed as exc:
                raise CLIError(f"migration of {args.name} did not succeed: {exc}") from exc
        if args.verb == "backup":
            try:
                return backingup.backup(
                    api, args.name, ns, mode=vmbackups.BackupMode(args.mode),
                    target=args.target, name=args.backup_name, wait=not args.no_wait,
                )  # fmt: skip
            except backingup.BackupFailed as exc:
                raise CLIError(f"backup of {args.name} did not succeed: {exc}") from exc
        if args.verb == "restore":
            try:
                if args.in_place:
                    return backingup.restore_in_place(
                        api, args.name, args.in_place, ns, timeout=args.timeout
                    )
                return backingup.restore(
                    api, args.name, args.as_name, ns, wait=not args.no_wait, timeout=args.timeout
                )
            except backingup.BackupFailed as exc:
                raise CLIError(f"restore of {args.name} did not succeed: {exc}") from exc
        if args.verb == "list":
            if args.all_namespaces:
                items = api.list_cluster_custom_object(
                    groups.GROUP, groups.VERSION, kinds.VIRTUALMACHINE.plural
                )
            else:
                items = api.list_namespaced_custom_object(
                    groups.GROUP, groups.VERSION, ns, kinds.VIRTUALMACHINE.plural
                )
            return table([row(vm) for vm in items["items"]])
        vm = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, ns, kinds.VIRTUALMACHINE.plural, args.name
        )
        if args.verb == "get":
            return describe(vm)
        if args.verb == "console":
            st = vm.get("status") or {}
            path = st.get("consoleLog")
            if not path:
                raise CLIError(f"{args.name} has no console log yet (not realized on a node)")
            out = [f"node {st.get('nodeName')}: {path}"]
            log = Path(path)
            if log.is_file():
                out.extend(log.read_text(errors="replace").splitlines()[-args.tail :])
            else:
                out.append("(the log is on the node; not readable from here)")
            return "\n".join(out)
        patch = power_patch(args.verb, vm)
        api.patch_namespaced_custom_object(
            groups.GROUP, groups.VERSION, ns, kinds.VIRTUALMACHINE.plural, args.name, patch
        )
        return f"virtualmachine/{args.name} {args.verb} requested"
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            raise CLIError(f"VirtualMachine {args.name!r} not found in namespace {ns}") from exc
        raise CLIError(f"API error {exc.status}: {exc.reason}") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubevisor", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in ("start", "stop", "restart", "pause", "unpause", "get", "console"):
        s = sub.add_parser(verb, help=f"{verb} a VirtualMachine")
        s.add_argument("name")
        s.add_argument("-n", "--namespace", default="default")
        if verb == "console":
            s.add_argument("--tail", type=int, default=20, help="lines of the log to print")
    s = sub.add_parser("migrate", help="live-migrate a VirtualMachine to another node")
    s.add_argument("name")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("--to", help="target node (default: the controller chooses)")
    s.add_argument("--no-wait", action="store_true", help="create the Migration and return")
    s = sub.add_parser("backup", help="back up a VirtualMachine's disks (live if it runs)")
    s.add_argument("name")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("--mode", choices=[m.value for m in vmbackups.BackupMode], default="Full")
    s.add_argument("--target", help="target directory (default: backups/ on shared storage)")
    s.add_argument("--name", dest="backup_name", help="VMBackup name (default: VM-<random>)")
    s.add_argument("--no-wait", action="store_true", help="create the VMBackup and return")
    s = sub.add_parser("restore", help="create a new VirtualMachine from a VMBackup")
    s.add_argument("name", help="the VMBackup")
    into = s.add_mutually_exclusive_group(required=True)
    into.add_argument("--as", dest="as_name", help="name of the new VM")
    into.add_argument(
        "--in-place", metavar="VM", help="restore this stopped VM's own disks (its backup)"
    )
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("--no-wait", action="store_true", help="create the VM and return")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    s = sub.add_parser("drain", help="cordon a node and wait until its VMs moved away")
    s.add_argument("node")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    s = sub.add_parser("uncordon", help="let VMs be placed on a node again")
    s.add_argument("node")
    s = sub.add_parser("desktop", help="desktop pools: claim a desktop")
    dsub = s.add_subparsers(dest="desktop_verb", required=True)
    c = dsub.add_parser("claim", help="claim a desktop from a pool and print its URL")
    c.add_argument("pool")
    c.add_argument("--user", required=True)
    c.add_argument("--group", action="append", default=[], help="the user's group (repeatable)")
    c.add_argument("--shadow", action="store_true", help="also a view-only URL")
    c.add_argument("--name", help="claim name (default: generated, <pool>-...)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for binding")
    c.add_argument("-n", "--namespace", default="default")
    s = sub.add_parser("list", help="list VirtualMachines")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("-A", "--all-namespaces", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(run(args))
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
