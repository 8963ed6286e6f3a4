"""One reconcile of a VirtualMachine: a scope and the phases run over it.

Each phase reads the scope, fetches what it must through ``kube.Kube`` and records its
decision in the scope; the decisions themselves are the pure functions in
``resolving``, ``powering`` and ``placement.placing``. ``handlers`` then writes status
once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from kubevisor.api import groups, kinds, machines, virtualmachines, vmbackups
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.api.virtualmachines import DesiredState
from kubevisor.controller.kube import client as kube
from kubevisor.controller.placement import placing, reserving
from kubevisor.controller.vms import moving, powering, resolving, restoring, sshkeys
from kubevisor.controller.vms.status import Cond

ANNOTATION_PAUSED = groups.ANNOTATION_PAUSED
ANNOTATION_POWER = groups.ANNOTATION_POWER
#: The agent's finalizer (docs/architecture.md): ours waits until it is gone.
AGENT_FINALIZER = groups.AGENT_FINALIZER


def agent_reported(status: dict[str, Any]) -> bool:
    """True once an agent wrote a phase on the placed VM (the controller's phase is
    dropped at placement, so a placed VM without one was never reported on)."""
    return bool(status.get("nodeName")) and status.get("phase") is not None


#: Agent phases meaning no domain is running.
AT_REST: frozenset[str | None] = frozenset(
    {
        None,
        virtualmachines.VirtualMachinePhase.PENDING,
        virtualmachines.VirtualMachinePhase.SCHEDULING,
        virtualmachines.VirtualMachinePhase.STOPPED,
        *virtualmachines.GUEST_STOPPED,
    }
)


@dataclass
class Scope:
    """Everything one reconcile knows and decides about one VM."""

    obj: dict[str, Any]
    """The VM as just read from the API server."""
    now: datetime
    spec: virtualmachines.VirtualMachineSpec | None = None
    """Parsed spec; None when it does not parse (reported as InvalidSpec)."""
    wanted: machines.MachineSpec | None = None
    """The machine the spec and template resolve to now."""
    only_nodes: frozenset[str] | None = None
    """Nodes the VM may be placed on at all (clone sources)."""
    only_reason: str = ""
    power: powering.PowerDecision | None = None
    machine: machines.MachineSpec | None = None
    """The machine to record in status (the running one unless a restart applies)."""
    node: str | None = None
    phase: str | None = None
    """Our phase while unplaced; None once placed (the agent's then)."""
    mac_conflict: str | None = None
    """Set when another, earlier VM uses one of this VM's MACs on a segment (`macs`)."""
    restore: virtualmachines.VMRestoreState | None = None
    """status.restore (``restoring.judge``)."""
    conds: dict[str, Cond] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    """Normal Events to post, (reason, message); warnings follow from conditions."""

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.obj.get("metadata") or {})

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def namespace(self) -> str:
        return str(self.meta.get("namespace"))

    @property
    def name(self) -> str:
        return str(self.meta.get("name"))

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid"))

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.meta.get("annotations") or {})

    @property
    def current_machine(self) -> machines.MachineSpec | None:
        raw = self.status.get("machine")
        if not raw:
            return None
        try:
            return machines.MachineSpec.model_validate(raw)
        except pydantic.ValidationError:
            return None


def _errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def resolve(
    scope: Scope, api: kube.Kube, *, templates: Mapping[tuple[str, str], dict[str, Any]]
) -> None:
    """Template / clone source / inline spec -> ``scope.wanted`` and TemplateResolved.

    ``templates`` holds the VMTemplates their watch delivered; one not there is read.
    A template the watch has not caught up with yet resolves as a GET an instant
    earlier would have: its event then wakes every VM using it
    (``VMs.template_changed``), so the VMs converge on the new spec either way, and a
    burst of VMs from one template no longer reads it once per pass."""
    ok = ConditionType.TEMPLATE_RESOLVED
    try:
        scope.spec = virtualmachines.VirtualMachineSpec.model_validate(scope.obj.get("spec") or {})
    except pydantic.ValidationError as exc:
        scope.conds[ok] = Cond("False", Reason.INVALID_SPEC, f"spec is invalid: {_errors(exc)}")
        return
    spec = scope.spec
    template: machines.MachineSpec | None = None
    origin = "from its own spec"
    if spec.source is not None:
        await _resolve_clone(scope, api, spec)
        await authorize_keys(scope, api)
        return
    if spec.template_ref is not None:
        name = spec.template_ref.name
        raw = templates.get((scope.namespace, name))
        if raw is None:
            raw = await api.get(kinds.VMTEMPLATE.plural, scope.namespace, name)
        if raw is None:
            scope.conds[ok] = Cond(
                "False",
                Reason.TEMPLATE_NOT_FOUND,
                f"VMTemplate {name} does not exist in namespace {scope.namespace}; the VM"
                " is created as soon as it does.",
            )
            return
        try:
            template = machines.MachineSpec.model_validate(raw.get("spec") or {})
        except pydantic.ValidationError as exc:
            scope.conds[ok] = Cond(
                "False", Reason.INVALID_SPEC, f"VMTemplate {name} is invalid: {_errors(exc)}"
            )
            return
        origin = f"from VMTemplate {name}"
    try:
        scope.wanted = resolving.resolve(template, spec, uid=scope.uid)
    except pydantic.ValidationError as exc:
        scope.conds[ok] = Cond(
            "False", Reason.INVALID_SPEC, f"the resolved machine is invalid: {_errors(exc)}"
        )
        return
    scope.conds[ok] = Cond("True", Reason.AS_EXPECTED, f"machine resolved {origin}")
    await authorize_keys(scope, api)


async def authorize_keys(scope: Scope, api: kube.Kube) -> None:
    """The VM's ssh keys onto ``scope.wanted``'s command line (``sshkeys``); without
    them the machine stays unresolved."""
    scope.wanted, cond = await sshkeys.apply(scope.wanted, scope.namespace, api)
    if cond is not None:
        scope.conds[ConditionType.SSH_KEYS_READY] = cond


async def _resolve_clone(
    scope: Scope, api: kube.Kube, spec: virtualmachines.VirtualMachineSpec
) -> None:
    ok = ConditionType.TEMPLATE_RESOLVED
    assert spec.source is not None
    if spec.source.backup is not None:
        await _resolve_restore(scope, api, spec, spec.source.backup.name)
        return
    assert spec.source.virtual_machine is not None
    source_name = spec.source.virtual_machine.name
    if scope.status.get("nodeName") and scope.current_machine is not None:
        # Disks are copied once, when the clone is first realized: keep what was recorded.
        scope.wanted = scope.current_machine
        scope.conds[ok] = Cond("True", Reason.AS_EXPECTED, f"cloned from {source_name}")
        return
    source = await api.get(kinds.VIRTUALMACHINE.plural, scope.namespace, source_name)
    src_status = dict((source or {}).get("status") or {})
    src_node = src_status.get("nodeName")
    if source is None or not src_node or not src_status.get("machine"):
        why = "does not exist" if source is None else "has no disks yet (it was never placed)"
        scope.conds[ok] = Cond(
            "False",
            Reason.SOURCE_NOT_FOUND,
            f"clone source VirtualMachine {source_name} {why} in namespace"
            f" {scope.namespace}; the clone waits for it.",
        )
        return
    src_machine = machines.MachineSpec.model_validate(src_status["machine"])
    try:
        scope.wanted = resolving.resolve_clone(
            src_machine,
            spec,
            source_namespace=scope.namespace,
            source_name=source_name,
            uid=scope.uid,
        )
    except pydantic.ValidationError as exc:
        scope.conds[ok] = Cond(
            "False", Reason.INVALID_SPEC, f"the resolved machine is invalid: {_errors(exc)}"
        )
        return
    running = src_status.get("phase") not in AT_REST or src_status.get("desiredState") != (
        DesiredState.STOPPED
    )
    local = any(d.storage == "local" for d in src_machine.disks)
    if running or local:
        scope.only_nodes = frozenset({src_node})
        scope.only_reason = (
            f"clone source {source_name} is running on {src_node} (its agent takes the"
            " point-in-time copy)"
            if running
            else f"clone source disks are local to {src_node}"
        )
    scope.conds[ok] = Cond("True", Reason.AS_EXPECTED, f"cloning {source_name}")


async def _resolve_restore(
    scope: Scope, api: kube.Kube, spec: virtualmachines.VirtualMachineSpec, name: str
) -> None:
    """``spec.source.backup``: the machine the VMBackup recorded, disks copied from its
    files once it Succeeded (docs/backup.md, "Restore")."""
    ok = ConditionType.TEMPLATE_RESOLVED
    if scope.status.get("nodeName") and scope.current_machine is not None:
        # Disks are copied once, when the VM is first realized: keep what was recorded.
        scope.wanted = scope.current_machine
        scope.conds[ok] = Cond("True", Reason.AS_EXPECTED, f"restored from VMBackup {name}")
        return
    raw = await api.get(kinds.VMBACKUP.plural, scope.namespace, name)
    backup: vmbackups.VMBackup | None = None
    if raw is not None:
        try:
            backup = vmbackups.VMBackup.model_validate(raw)
        except pydantic.ValidationError:
            backup = None
    st = backup.status if backup else None
    if backup is None or st is None or st.phase is not vmbackups.VMBackupPhase.SUCCEEDED:
        why = (
            "does not exist"
            if raw is None
            else f"is not Succeeded (phase {(st.phase if st else None) or 'Pending'})"
        )
        scope.conds[ok] = Cond(
            "False",
            Reason.SOURCE_NOT_FOUND,
            f"VMBackup {name} {why} in namespace {scope.namespace}; the restore waits for it.",
        )
        return
    if st.machine is None or not st.disks:
        scope.conds[ok] = Cond(
            "False", Reason.INVALID_SPEC, f"VMBackup {name} recorded no machine or no disks."
        )
        return
    try:
        scope.wanted = resolving.resolve_restore(
            st.machine, {d.name: d.path for d in st.disks}, spec, uid=scope.uid
        )
    except pydantic.ValidationError as exc:
        scope.conds[ok] = Cond(
            "False", Reason.INVALID_SPEC, f"the resolved machine is invalid: {_errors(exc)}"
        )
        return
    if backup.spec.target.storage == "local" and st.node_name:
        scope.only_nodes = frozenset({st.node_name})
        scope.only_reason = f"VMBackup {name} is on node-local storage of {st.node_name}"
    scope.conds[ok] = Cond("True", Reason.AS_EXPECTED, f"restoring VMBackup {name}")


async def restore_in_place(scope: Scope, api: kube.Kube) -> None:
    """The kubevisor.io/restore-from annotation, judged by ``restoring.judge``."""
    assert scope.power is not None
    name = scope.annotations.get(groups.ANNOTATION_RESTORE)
    backup = None
    if name is not None and groups.annotation_token_error(name) is None:
        raw = await api.get(kinds.VMBACKUP.plural, scope.namespace, name)
        if raw is not None:
            try:
                backup = vmbackups.VMBackup.model_validate(raw)
            except pydantic.ValidationError:
                backup = None
    current = None
    if scope.status.get("restore") is not None:
        try:
            current = virtualmachines.VMRestoreState.model_validate(scope.status["restore"])
        except pydantic.ValidationError:
            current = None
    stopped = scope.power.desired == DesiredState.STOPPED and scope.status.get("phase") in AT_REST
    cond, scope.restore = restoring.judge(
        vm_name=scope.name,
        annotation=name,
        backup=backup,
        stopped=stopped,
        current=current,
        applied=scope.status.get("appliedRestore"),
    )
    if cond is not None:
        scope.conds[ConditionType.RESTORED] = cond


def power(scope: Scope) -> None:
    """runStrategy + annotations + what the agent reports -> desired state, token."""
    strategy = scope.spec.run_strategy if scope.spec else virtualmachines.RunStrategy.HALTED
    status, notes = scope.status, scope.annotations
    scope.power = powering.next_power_state(
        powering.PowerInputs(
            run_strategy=strategy,
            phase=status.get("phase"),
            desired=status.get("desiredState"),
            restart_annotation=valid_token(notes.get(groups.ANNOTATION_RESTART)),
            restart_token=status.get("restartToken"),
            applied_restart_token=status.get("appliedRestartToken"),
            paused=notes.get(ANNOTATION_PAUSED) == "true",
            manual_power=notes.get(ANNOTATION_POWER),
        )
    )
    errors = groups.annotation_errors(notes)
    if errors:
        # Present only while something is ignored: omitting it from the apply removes it.
        scope.conds[ConditionType.ANNOTATIONS_VALID] = Cond(
            "False",
            Reason.INVALID_ANNOTATION,
            "ignored: " + "; ".join(f"annotation {k} {why}" for k, why in sorted(errors.items())),
        )


def record_machine(scope: Scope) -> None:
    """Which machine goes into status, and RestartRequired.

    A VM that is not running takes the newly resolved machine; a running one keeps its
    recorded machine until a restart, and says what a restart would change.
    """
    assert scope.power is not None
    current, wanted = scope.current_machine, scope.wanted
    rr = ConditionType.RESTART_REQUIRED
    at_rest = (
        not scope.status.get("nodeName")
        or current is None
        or scope.power.restarted
        or (scope.power.desired == DesiredState.STOPPED and scope.status.get("phase") in AT_REST)
    )
    if wanted is None:
        scope.machine = current
    elif at_rest:
        scope.machine = wanted
    else:
        scope.machine = current
    changed = (
        resolving.changed_fields(scope.machine, wanted)
        if scope.machine is not None and wanted is not None
        else []
    )
    if changed:
        scope.conds[rr] = Cond(
            "True",
            Reason.SPEC_CHANGED,
            f"{', '.join(changed)} changed; restart the VM to apply"
            " (kubevisor restart NAME, or set annotation kubevisor.io/restart).",
        )
    else:
        scope.conds[rr] = Cond("False", Reason.AS_EXPECTED, "")


async def schedule(scope: Scope, api: kube.Kube, write: Any, *, placer: reserving.Placer) -> None:
    """Keep the node of a placed VM; place a VM that should run; report why not.

    ``write`` is the status write. A placement is reserved in the ledger before the
    write, so concurrent placements count this VM; a failed write releases it.
    """
    assert scope.power is not None
    sched = ConditionType.SCHEDULED
    # a Succeeded live migration or a node-loss recovery moved it (vms.moving)
    placed = moving.relocated_to(scope.status) or scope.status.get("nodeName")
    if placed:
        scope.node = str(placed)
        scope.conds[sched] = Cond("True", Reason.SCHEDULED, f"placed on node {placed}")
        await write(scope)
        return
    if scope.machine is None:
        scope.phase = virtualmachines.VirtualMachinePhase.PENDING
        scope.conds[sched] = Cond(
            "False", Reason.UNSCHEDULABLE, "waiting for the machine to be resolved"
        )
        await write(scope)
        return
    if scope.power.desired == DesiredState.STOPPED:
        scope.phase = virtualmachines.VirtualMachinePhase.STOPPED
        scope.conds[sched] = Cond("False", Reason.STOPPED, "not placed: the VM is not asked to run")
        await write(scope)
        return
    if scope.mac_conflict is not None:
        scope.phase = virtualmachines.VirtualMachinePhase.PENDING
        scope.conds[sched] = Cond("False", Reason.MAC_CONFLICT, scope.mac_conflict)
        await write(scope)
        return
    await placer.ready(api)
    nodes = await placer.nodes(api, now=scope.now)
    request = placing.request_for(
        scope.machine, only_nodes=scope.only_nodes, only_reason=scope.only_reason
    )
    result = placer.choose(scope.uid, request, nodes)
    if result.node is None:
        scope.phase = virtualmachines.VirtualMachinePhase.PENDING
        scope.conds[sched] = Cond("False", Reason.UNSCHEDULABLE, result.reason)
        await write(scope)
        return
    scope.node = result.node
    scope.conds[sched] = Cond("True", Reason.SCHEDULED, f"placed on node {result.node}")
    scope.events.append((Reason.SCHEDULED, f"placed on node {result.node}."))
    try:
        await write(scope)
    except BaseException:
        placer.release(scope.uid)
        raise
    placer.confirm(scope.uid, scope.obj)


def valid_token(value: str | None) -> str | None:
    """An annotation value that may be copied into status, else None (ignored: an invalid
    value in status would make every later status write fail with 422)."""
    if value is None or groups.annotation_token_error(value) is not None:
        return None
    return value
