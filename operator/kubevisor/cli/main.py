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
    kubevisor claim office --user alice   # prints the desktop's browser URL
    kubevisor vnc desk-3 --open           # the desktop's browser URL, opened
    kubevisor ssh -X apps1 -- xeyes       # ssh with X11 forwarding, through the gateway
    kubevisor get web -o yaml             # -o json|yaml|name as kubectl prints them
    source <(kubevisor completion bash)   # or zsh

``migrate``, ``drain`` and ``uncordon`` are in :mod:`kubevisor.cli.migrating`; ``backup``
and ``restore`` in :mod:`kubevisor.cli.backingup`; ``claim`` (also ``desktop claim``) in
:mod:`kubevisor.cli.desktops`; what is printed, errors included, in
:mod:`kubevisor.cli.rendering`; ``completion`` in :mod:`kubevisor.cli.completing`;
``ssh`` in :mod:`kubevisor.cli.remote`.
Errors print one sentence that says how to fix them (exit status 1), never a traceback.
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
from kubevisor.cli import backingup, completing, desktops, migrating, remote, rendering

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


def _client(kubeconfig: str | None) -> Any:
    """The CustomObjectsApi of the configured cluster (in-cluster inside a Pod)."""
    import kubernetes

    try:
        if (
            not kubeconfig
            and not os.environ.get("KUBECONFIG")
            and os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise CLIError(rendering.no_kubeconfig(str(exc).strip() or type(exc).__name__)) from exc
    return kubernetes.client.CustomObjectsApi()


def _message(exc: Any) -> str:
    """The API server's sentence from an ApiException's Status body."""
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        return str(exc.body or "")


def _names(api: Any, plural: str, namespace: str) -> list[str]:
    """Names of the objects of ``plural`` in ``namespace`` (for a not-found sentence)."""
    import kubernetes

    try:
        items = api.list_namespaced_custom_object(groups.GROUP, groups.VERSION, namespace, plural)
    except kubernetes.client.ApiException:
        return []
    return [o["metadata"]["name"] for o in items["items"]]


def _get_vm(api: Any, name: str, ns: str) -> dict[str, Any]:
    import kubernetes

    plural = kinds.VIRTUALMACHINE.plural
    try:
        vm: dict[str, Any] = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, ns, plural, name
        )
    except kubernetes.client.ApiException as exc:
        if exc.status == 404 and "could not find the requested resource" not in _message(exc):
            raise CLIError(
                rendering.not_found("VirtualMachine", name, _names(api, plural, ns), namespace=ns)
            ) from exc
        raise
    return vm


def _out(args: argparse.Namespace, objects: Any, human: Any) -> str:
    return rendering.render(objects, getattr(args, "output", None) or rendering.HUMAN, human=human)


def run(args: argparse.Namespace) -> str:
    """Do what ``args`` ask and return what to print; CLIError for what the user can fix."""
    import kubernetes
    import urllib3

    if args.verb == "completion":
        return completing.script(args.shell, parser())
    api = _client(args.kubeconfig)
    try:
        return _run(api, args)
    except kubernetes.client.ApiException as exc:
        raise CLIError(rendering.api_error(exc.status, exc.reason, _message(exc))) from exc
    except urllib3.exceptions.HTTPError as exc:
        server = kubernetes.client.Configuration.get_default_copy().host
        raise CLIError(rendering.unreachable(server, type(exc).__name__)) from exc


def _run(api: Any, args: argparse.Namespace) -> str:
    import kubernetes

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
                nodes = [str(n.metadata.name) for n in core.list_node().items if n.metadata]
                found = rendering.not_found("Node", args.node, nodes, namespace=None)
                raise CLIError(found) from exc
            raise
    ns = args.namespace
    if args.verb in ("desktop", "claim"):
        try:
            return desktops.claim(
                api, args.pool, ns, user=args.user, groups_=args.group, shadow=args.shadow,
                name=args.name, timeout=args.timeout,
            )  # fmt: skip
        except desktops.ClaimFailed as exc:
            raise CLIError(str(exc)) from exc
    if args.verb == "list":
        plural = kinds.VIRTUALMACHINE.plural
        if args.all_namespaces:
            items = api.list_cluster_custom_object(groups.GROUP, groups.VERSION, plural)
        else:
            items = api.list_namespaced_custom_object(groups.GROUP, groups.VERSION, ns, plural)
        return _out(args, items["items"], rendering.vm_table)
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
    vm = _get_vm(api, args.name, ns)  # every verb below acts on an existing VM
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
    if args.verb == "get":
        return _out(args, vm, rendering.describe)
    if args.verb == "console":
        return _console(vm, tail=args.tail)
    if args.verb == "vnc":
        return _vnc(api, vm, ns, args)
    patch = power_patch(args.verb, vm)
    done = api.patch_namespaced_custom_object(
        groups.GROUP, groups.VERSION, ns, kinds.VIRTUALMACHINE.plural, args.name, patch
    )
    return _out(args, done, lambda _: f"virtualmachine/{args.name} {args.verb} requested")


def _console(vm: dict[str, Any], *, tail: int) -> str:
    name = vm["metadata"]["name"]
    st = vm.get("status") or {}
    path = st.get("consoleLog")
    if not path:
        raise CLIError(
            f"{name} has no console log yet: it is not realized on a node (kubevisor get "
            f"{name} shows its phase and conditions)"
        )
    out = [f"node {st.get('nodeName')}: {path}"]
    log = Path(path)
    if log.is_file():
        out.extend(log.read_text(errors="replace").splitlines()[-tail:])
    else:
        out.append("(the log is on the node; not readable from here)")
    return "\n".join(out)


def _vnc(api: Any, vm: dict[str, Any], ns: str, args: argparse.Namespace) -> str:
    claims = api.list_namespaced_custom_object(
        groups.GROUP, groups.VERSION, ns, kinds.DESKTOPCLAIM.plural
    )["items"]
    try:
        url = rendering.vnc_url(vm, claims, view_only=args.view_only)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if args.open:
        import webbrowser

        if not webbrowser.open(url):
            raise CLIError(f"no browser could be started (set BROWSER); the URL: {url}")
    if (args.output or rendering.HUMAN) == rendering.HUMAN:
        return url
    return rendering.render({"metadata": {"name": vm["metadata"]["name"]}, "url": url},
                            args.output, human=str)  # fmt: skip


def _output_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "-o", "--output", choices=rendering.FORMATS, help="json, yaml or name (default: a table)"
    )


def _claim_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("pool")
    c.add_argument("--user", required=True)
    c.add_argument("--group", action="append", default=[], help="the user's group (repeatable)")
    c.add_argument("--shadow", action="store_true", help="also a view-only URL")
    c.add_argument("--name", help="claim name (default: generated, <pool>-...)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for binding")
    c.add_argument("-n", "--namespace", default="default")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubevisor", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    s = sub.add_parser("list", help="list VirtualMachines")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("-A", "--all-namespaces", action="store_true")
    _output_flag(s)
    helps = {"vnc": "print (or --open) the browser URL of a desktop VM's display"}
    for verb in ("get", "start", "stop", "restart", "pause", "unpause", "console", "vnc"):
        s = sub.add_parser(verb, help=helps.get(verb, f"{verb} a VirtualMachine"))
        s.add_argument("name")
        s.add_argument("-n", "--namespace", default="default")
        if verb == "console":
            s.add_argument("--tail", type=int, default=20, help="lines of the log to print")
        else:
            _output_flag(s)
        if verb == "vnc":
            s.add_argument("--open", action="store_true", help="open the URL in a browser")
            s.add_argument("--view-only", action="store_true", help="the view-only URL")
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
    _claim_flags(sub.add_parser("claim", help="claim a desktop from a pool and print its URL"))
    s = sub.add_parser("desktop", help="desktop pools: claim a desktop (same as claim)")
    dsub = s.add_subparsers(dest="desktop_verb", required=True)
    _claim_flags(dsub.add_parser("claim", help="claim a desktop from a pool and print its URL"))
    s = sub.add_parser("ssh", help="ssh to a VM's guest through the gateway (-X: X11)")
    s.add_argument("name")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("-X", dest="x11", action="store_true", help="forward X11 (ssh -X)")
    s.add_argument("-i", dest="identity", help="private key file (ssh -i)")
    s.add_argument("-l", dest="login", default="root", help="user in the guest (root)")
    s.add_argument("--gateway", help=f"gateway base URL (default: ${remote.ENV_GATEWAY})")
    s.add_argument("--known-hosts", help="known hosts file (~/.ssh/kubevisor_known_hosts)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run")
    s = sub.add_parser("_ssh-proxy")  # ssh's ProxyCommand (cli.remote), not for users
    s.add_argument("name")
    s.add_argument("-n", "--namespace", default="default")
    s.add_argument("--gateway", required=True)
    s = sub.add_parser("completion", help="print a shell completion script")
    s.add_argument("shell", choices=completing.SHELLS)
    return p


def _ssh(args: argparse.Namespace) -> int:
    """``kubevisor ssh``: ssh's own exit status (its errors are its own to print)."""
    import kubernetes

    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    api = _client(args.kubeconfig)
    try:
        return remote.ssh(api, _get_vm(api, args.name, args.namespace), args)
    except remote.SSHError as exc:
        raise CLIError(str(exc)) from exc
    except kubernetes.client.ApiException as exc:
        raise CLIError(rendering.api_error(exc.status, exc.reason, _message(exc))) from exc


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb == "_ssh-proxy":
        return remote.proxy(args)
    try:
        if args.verb == "ssh":
            return _ssh(args)
        print(run(args))
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
