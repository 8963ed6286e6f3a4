"""What the CLI prints: a human table or description by default, ``-o json|yaml|name``
as kubectl prints it, and the sentences of its errors (each says how to fix it).

Pure functions of API objects (raw dicts, camelCase), table-tested; ``main`` only calls
them. ``-o json`` and ``-o yaml`` print the objects as the API server returned them minus
``metadata.managedFields`` (kubectl's default), a list as a ``kind: List``, so the output
feeds ``kubectl apply`` or ``jq`` alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

HUMAN = "human"
#: The ``-o`` choices; ``human`` is the default and not spelled on the command line.
FORMATS = ("json", "yaml", "name")

#: Where ``hack/up`` writes the dev cluster's kubeconfig (README, docs/quickstart.md).
DEV_KUBECONFIG = "/var/lib/kubevisor-dev/dev/controlplane/kubeconfig"


def _clean(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    if meta:
        out["metadata"] = meta
    return out


@dataclass(frozen=True)
class Done:
    """What a verb that acts (migrate, backup, restore, drain, claim) did: the object(s)
    it created or changed, as they are when it returns (``-o json|yaml|name`` prints
    them), and the sentence a human reads (the default output)."""

    objects: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    text: str


def done(result: Done, fmt: str | None) -> str:
    """``result`` in ``fmt`` (None: the human sentence)."""
    return render(result.objects, fmt or HUMAN, human=lambda _: result.text)


def render(
    objects: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    human: Callable[[Any], str],
    kind: str = "virtualmachine",
) -> str:
    """``objects`` (one object, or a list of them) in ``fmt``; ``human`` renders the
    default. ``name`` prints ``<kind>/<name>`` lines, as ``kubectl get -o name`` does."""
    if fmt == HUMAN:
        return human(objects)
    many = not isinstance(objects, Mapping)
    items = [_clean(o) for o in objects] if many else [_clean(objects)]  # type: ignore[arg-type]
    if fmt == "name":
        return "\n".join(
            f"{str(o.get('kind') or kind).lower()}/{o['metadata']['name']}" for o in items
        )
    doc: Any = {"apiVersion": "v1", "kind": "List", "items": items} if many else items[0]
    if fmt == "json":
        return json.dumps(doc, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


# --- the human form of VirtualMachines ---------------------------------------------------

HEADER = ["NAME", "PHASE", "DESIRED", "NODE", "IP", "STRATEGY"]


def row(vm: Mapping[str, Any]) -> list[str]:
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


def table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    """Columns padded to their widest cell, two spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def vm_table(vms: Sequence[Mapping[str, Any]]) -> str:
    """``list``: the table, or a sentence when there is nothing to show."""
    if not vms:
        return "No VirtualMachines found."
    return table([row(vm) for vm in vms])


def describe(vm: Mapping[str, Any]) -> str:
    """``get``: the list row, the machine summary, display and conditions."""
    st = vm.get("status") or {}
    lines = [table([row(vm)]), ""]
    machine = st.get("machine") or {}
    if machine:
        nics = ", ".join(f"{n['name']}={n.get('mac')}" for n in machine.get("nics") or [])
        lines.append(
            f"machine: {machine.get('cpu', {}).get('cores')} vCPU, {machine.get('memory')},"
            f" nics: {nics or '-'}"
        )
    display = st.get("display") or {}
    if display.get("port"):
        lines.append(f"display: {display.get('type')} {display.get('host')}:{display['port']}")
    for c in st.get("conditions") or []:
        lines.append(f"{c['type']}={c['status']} ({c['reason']}) {c.get('message', '')}".rstrip())
    return "\n".join(lines)


# --- vnc ---------------------------------------------------------------------------------


def vnc_url(vm: Mapping[str, Any], claims: Sequence[Mapping[str, Any]], *, view_only: bool) -> str:
    """The browser URL of ``vm``'s desktop: the ``status.url`` (``viewUrl`` with
    ``view_only``) of the Bound DesktopClaim holding it. The display gateway admits only
    such signed URLs (docs/gateway.md), so a VM no claim holds has none: the error says
    where its display listens and how to get a URL. Raises ValueError with that sentence."""
    name = vm["metadata"]["name"]
    for claim in claims:
        st = claim.get("status") or {}
        if st.get("vmName") != name or st.get("phase") != "Bound":
            continue
        url = st.get("viewUrl") if view_only else st.get("url")
        if url:
            return str(url)
        if view_only:
            raise ValueError(
                f"desktopclaim/{claim['metadata']['name']} holds {name} but allows no "
                "view-only viewer (spec.allowShadowing: true gives one)"
            )
    display = (vm.get("status") or {}).get("display") or {}
    where = (
        f"its VNC display listens on {display.get('host')}:{display['port']} on node "
        f"{(vm.get('status') or {}).get('nodeName')}"
        if display.get("port")
        else "it has no display yet (not running, or spec.display is off)"
    )
    raise ValueError(
        f"{name} has no browser URL: the display gateway opens only desktops bound to a "
        f"DesktopClaim, and none holds {name}; {where}. For a browser URL, claim a desktop "
        "from a pool: kubevisor claim POOL --user USER"
    )


# --- errors ------------------------------------------------------------------------------


def not_found(kind: str, name: str, existing: Sequence[str], *, namespace: str | None) -> str:
    """The sentence for a missing object: what exists there (in ``namespace``, or the
    cluster for a cluster-scoped kind), and where else to look."""
    where = f"namespace {namespace}" if namespace else "the cluster"
    if existing:
        shown = ", ".join(sorted(existing)[:20]) + (" ..." if len(existing) > 20 else "")
        there = f"{kind}s in {where}: {shown}"
    else:
        there = f"there are no {kind}s in {where}"
    more = " (-A lists every namespace)" if namespace else ""
    return f"{kind} {name!r} not found in {where}; {there}{more}"


def no_kubeconfig(detail: str) -> str:
    return (
        f"no cluster configured ({detail}). Set KUBECONFIG to your cluster's kubeconfig "
        f"(export KUBECONFIG=$HOME/.kube/config; for hack/up's dev cluster "
        f"export KUBECONFIG={DEV_KUBECONFIG}) or pass --kubeconfig FILE"
    )


def unreachable(server: str, detail: str) -> str:
    return (
        f"cannot reach the API server at {server} ({detail}). Is the cluster up "
        "(hack/up for the dev cluster) and does KUBECONFIG point at it?"
    )


def api_error(status: int, reason: str, message: str) -> str:
    """An API refusal with what to do about the common ones."""
    if status == 403:
        return (
            f"forbidden: {message or reason}. Your account lacks the RBAC verb; ask for a "
            "Role granting it on kubevisor.io resources (charts/kubevisor/README.md)"
        )
    if status == 404 and "the server could not find the requested resource" in message:
        return (
            "the API server does not serve kubevisor.io: the CRDs are not installed "
            "(helm install kubevisor charts/kubevisor, or kubectl apply -f crds/)"
        )
    if status == 422:
        return f"the API server refused the change: {message or reason}"
    return f"API error {status} ({reason}): {message}".rstrip(": ")
