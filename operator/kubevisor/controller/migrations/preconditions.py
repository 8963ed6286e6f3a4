"""Migration preconditions: may this VM move, and to which node — or why not.

A pure function over plain data: the VirtualMachine (its ``status.machine`` and
``status.nodeName``), the Migration policy, the node Leases (the node contract,
``api/nodes``) and the capacity already used per node. The handler gathers them, calls
:func:`check` and writes the verdict as the Scheduled condition.

Checks per candidate node, all of them run so a user sees every problem at once, in this
order (the first one is the node's headline reason):

1. the node's agent is alive (Lease renewed);
2. nodeSelector and 3. capacity (CPU, memory, GPUs) — the placement rules of
   ``controller/placement/placing``, not a copy;
4. every network the VM's NICs use (and so their VLANs, which the target creates on
   that network on demand);
5. a migration URI the source can reach;
6. storage: a disk on a StorageBackend needs the target to reach it (and, on a
   ``local`` backend, block copy); a shared disk needs the same shared storage on the
   target, a local disk needs ``policy.allowBlockCopy``;
7. RTT from the source to the target (as either agent measured it) within
   ``policy.maxRTTMs``;
8. the VM's CPU model runs on the target.

Among the nodes that pass, the choice is placement's: most free memory, ties by name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from kubevisor.api import machines, migrations, nodes, virtualmachines
from kubevisor.controller.placement import placing

Reason = migrations.MigrationReason

#: CPU modes that expose the host's own CPU: they move only between equal host CPUs.
HOST_CPU_MODES: Final = frozenset({"host-model", "host-passthrough"})


@dataclass(frozen=True)
class Refusal:
    """One reason a node cannot take the VM: a reason and a sentence naming the node and
    the number."""

    node: str
    reason: Reason
    message: str


@dataclass(frozen=True)
class Verdict:
    """The answer: ``target`` when a node passes, else ``None``; ``reason``/``message``
    are what the Scheduled condition shows, ``refusals`` every failed check."""

    target: str | None
    reason: Reason
    message: str
    refusals: tuple[Refusal, ...] = ()


def _refused(reason: Reason, message: str, refusals: Iterable[Refusal] = ()) -> Verdict:
    return Verdict(None, reason, message, tuple(refusals))


def _vm_refusal(vm: virtualmachines.VirtualMachine) -> Verdict | None:
    status = vm.status
    name = vm.metadata.name
    phase = status.phase if status is not None else None
    if status is None or phase != virtualmachines.VirtualMachinePhase.RUNNING:
        shown = phase.value if phase is not None else "no phase"
        return _refused(
            Reason.VM_NOT_RUNNING,
            f"VM {name} is {shown}; only a Running VM migrates live.",
        )
    if status.machine is None or not status.node_name:
        return _refused(
            Reason.VM_NOT_RUNNING,
            f"VM {name} reports no node or resolved machine yet; only a placed VM migrates.",
        )
    return None


def _network_refusal(
    node: str, offered: frozenset[str], machine: machines.MachineSpec
) -> Refusal | None:
    missing: dict[str, list[str]] = defaultdict(list)
    for nic in machine.nics:
        if nic.network not in offered:
            missing[nic.network].append(
                f"NIC {nic.name}" + (f" on VLAN {nic.vlan}" if nic.vlan is not None else "")
            )
    if not missing:
        return None
    parts = [f"{net} (used by {', '.join(users)})" for net, users in sorted(missing.items())]
    noun = "network" if len(parts) == 1 else f"{len(parts)} networks"
    return Refusal(
        node, Reason.NETWORK_UNAVAILABLE, f"node {node} lacks {noun}: {'; '.join(parts)}."
    )


def _storage_refusals(
    node: str,
    *,
    source: nodes.NodeLease,
    target: nodes.NodeLease,
    machine: machines.MachineSpec,
    policy: migrations.MigrationPolicy,
) -> list[Refusal]:
    out = []
    for disk in machine.disks:
        shared = source.capacity.shared_storage
        if disk.backend is not None:
            kind = target.capacity.storage_backends.get(disk.backend)
            if kind is None:
                out.append(
                    Refusal(
                        node,
                        Reason.STORAGE_UNREACHABLE,
                        f"disk {disk.name} is on StorageBackend {disk.backend}, "
                        f"which node {node} does not reach.",
                    )
                )
                continue
            if kind != "local" or policy.allow_block_copy:
                continue
            why = f"is on StorageBackend {disk.backend} (type local, node {source.name}'s disk)"
        elif policy.allow_block_copy:
            continue
        elif disk.storage == "local":
            why = f"is on node {source.name}'s local storage"
        elif shared is not None and target.capacity.shared_storage == shared:
            continue
        elif shared is None:
            why = f"is on shared storage node {source.name} does not report"
        else:
            mounted = target.capacity.shared_storage or "none"
            why = f"is on shared storage {shared}, node {node} mounts {mounted}"
        out.append(
            Refusal(
                node,
                Reason.STORAGE_UNREACHABLE,
                f"disk {disk.name} {why} and policy.allowBlockCopy is false.",
            )
        )
    return out


def measured_rtt_ms(source: nodes.NodeLease, target: nodes.NodeLease) -> float | None:
    """The RTT between the two nodes: the source's measurement to the target, else the
    target's to the source (a round trip is symmetric); None when neither reported."""
    forward = source.rtts_ms.get(target.name)
    return forward if forward is not None else target.rtts_ms.get(source.name)


def _rtt_refusal(
    source: nodes.NodeLease, target: nodes.NodeLease, policy: migrations.MigrationPolicy
) -> Refusal | None:
    rtt = measured_rtt_ms(source, target)
    if rtt is None:
        return Refusal(
            target.name,
            Reason.RTT_UNKNOWN,
            f"no round-trip time between node {source.name} and node {target.name} has been "
            f"measured yet (limit {policy.max_rtt_ms:g} ms).",
        )
    if rtt > policy.max_rtt_ms:
        return Refusal(
            target.name,
            Reason.RTT_TOO_HIGH,
            f"round-trip time from node {source.name} to node {target.name} is {rtt:g} ms, "
            f"over policy.maxRTTMs {policy.max_rtt_ms:g} ms.",
        )
    return None


def cpu_refusal(
    cpu: machines.CPU, *, source: nodes.NodeLease, target: nodes.NodeLease
) -> Refusal | None:
    """Whether ``target`` can run the VM's CPU. Unset model: the driver default, runs
    anywhere. host-model/host-passthrough: the host CPUs must match where both nodes report
    theirs. A named model: must be among the target's models when it reports any. A node
    that reports nothing is not refused (libvirt still checks when the migration starts)."""
    model = cpu.model
    if model is None:
        return None
    node = target.name
    if model in HOST_CPU_MODES:
        have, want = target.capacity.host_cpu_model, source.capacity.host_cpu_model
        if have is None or want is None or have == want:
            return None
        return Refusal(
            node,
            Reason.CPU_MODEL_UNSUPPORTED,
            f"CPU mode {model} exposes node {source.name}'s {want}, node {node} has {have}.",
        )
    offered = target.capacity.cpu_models
    if not offered or model in offered:
        return None
    return Refusal(
        node,
        Reason.CPU_MODEL_UNSUPPORTED,
        f"node {node} cannot run CPU model {model} (it offers {len(offered)} models).",
    )


def _placement_refusals(
    lease: Mapping[str, Any],
    request: placing.Request,
    used: placing.Usage,
    *,
    now: datetime,
    cpu_overcommit: float,
) -> list[Refusal]:
    """nodeSelector and capacity through ``placing.refusal``, each asked alone so the
    reason is known; networks are checked here separately to name NICs and VLANs."""
    node = placing.node_from_lease(lease, now=now)
    selector_only = placing.Request(0, 0, 0, frozenset(), request.node_selector)
    resources_only = placing.Request(
        request.cpu, request.memory_bytes, request.gpus, frozenset(), {}
    )
    out = []
    for reason, asked, usage in (
        (Reason.NODE_SELECTOR_MISMATCH, selector_only, placing.Usage()),
        (Reason.INSUFFICIENT_CAPACITY, resources_only, used),
    ):
        why = placing.refusal(node, usage, asked, cpu_overcommit=cpu_overcommit)
        if why:
            out.append(Refusal(node.name, reason, f"node {node.name}: {why}."))
    return out


def refusals_for(
    lease: Mapping[str, Any],
    *,
    source: nodes.NodeLease,
    machine: machines.MachineSpec,
    policy: migrations.MigrationPolicy,
    used: placing.Usage,
    now: datetime,
    cpu_overcommit: float = 1.0,
    require_rtt: bool = True,
    cordoned: bool = False,
) -> list[Refusal]:
    """Every precondition ``lease``'s node fails, in the module's order; empty when it
    can take the VM. ``cordoned``: its Node is unschedulable (refused first, alone)."""
    target = nodes.parse(lease)
    name = target.name
    if not target.alive(now):
        return [
            Refusal(
                name,
                Reason.NODE_LOST,
                f"node {name}'s agent has not renewed its Lease within {target.duration_s} s.",
            )
        ]
    if cordoned:
        return [
            Refusal(
                name,
                Reason.TARGET_CORDONED,
                f"node {name} is cordoned (its Node is unschedulable; "
                "kubevisor uncordon to allow it).",
            )
        ]
    out = _placement_refusals(
        lease,
        placing.request_for(machine),
        used,
        now=now,
        cpu_overcommit=cpu_overcommit,
    )
    network = _network_refusal(name, frozenset(target.capacity.networks), machine)
    if network is not None:
        out.append(network)
    if not target.capacity.migration_uri:
        out.append(
            Refusal(
                name,
                Reason.MIGRATION_URI_MISSING,
                f"node {name}'s agent reports no migrationURI to receive migrations on.",
            )
        )
    out += _storage_refusals(name, source=source, target=target, machine=machine, policy=policy)
    rtt = _rtt_refusal(source, target, policy)
    if rtt is not None and (require_rtt or rtt.reason is not Reason.RTT_UNKNOWN):
        out.append(rtt)
    cpu = cpu_refusal(machine.cpu, source=source, target=target)
    if cpu is not None:
        out.append(cpu)
    return out


def check(
    vm: virtualmachines.VirtualMachine,
    policy: migrations.MigrationPolicy,
    *,
    leases: Iterable[Mapping[str, Any]],
    used: Mapping[str, placing.Usage],
    now: datetime,
    target: str | None = None,
    cpu_overcommit: float = 1.0,
    require_rtt: bool = True,
    cordoned: frozenset[str] = frozenset(),
) -> Verdict:
    """The target for migrating ``vm`` (``target`` when the Migration names one, else the
    best node that passes), or the refusals.

    ``leases`` are the raw node Leases; ``used`` what VMs already placed take per node
    (the VM itself counts on its source, never on a target). ``require_rtt`` False lets a
    node without any RTT measurement pass (a cluster whose agents do not probe yet).
    ``cordoned`` names the unschedulable Node objects (``placing.cordoned``): never a
    target, and a targetNode among them is refused with ``TargetCordoned``.
    """
    not_ready = _vm_refusal(vm)
    if not_ready is not None:
        return not_ready
    assert vm.status is not None and vm.status.machine is not None  # _vm_refusal checked
    machine, source_name = vm.status.machine, vm.status.node_name
    by_name = {nodes.parse(lease).name: lease for lease in leases}
    if source_name not in by_name:
        return _refused(
            Reason.NODE_LOST, f"VM {vm.metadata.name}'s node {source_name} has no agent Lease."
        )
    source = nodes.parse(by_name[source_name])
    if target == source_name:
        return _refused(
            Reason.TARGET_IS_SOURCE, f"VM {vm.metadata.name} already runs on node {target}."
        )
    if target is not None and target not in by_name:
        return _refused(
            Reason.TARGET_NOT_FOUND, f"node {target} has no kubevisor agent (no node Lease)."
        )
    names = [target] if target is not None else sorted(n for n in by_name if n != source_name)
    if not names:
        return _refused(Reason.NO_TARGET, f"node {source_name} is the only node.")
    refusals: list[Refusal] = []
    fitting = []
    for name in names:
        found = refusals_for(
            by_name[name],
            source=source,
            machine=machine,
            policy=policy,
            used=used.get(name, placing.Usage()),
            now=now,
            cpu_overcommit=cpu_overcommit,
            require_rtt=require_rtt,
            cordoned=name in cordoned,
        )
        refusals += found
        if not found:
            fitting.append(placing.node_from_lease(by_name[name], now=now))
    if fitting:
        chosen = placing.place(placing.request_for(machine), fitting, used).node
        assert chosen is not None  # every fitting node passed placement's own checks
        return Verdict(chosen, Reason.SCHEDULED, f"migrating to node {chosen}.", ())
    if target is not None:
        first = refusals[0]
        return _refused(first.reason, " ".join(r.message for r in refusals), refusals)
    per_node = "; ".join(r.message.rstrip(".") for r in refusals)
    return _refused(
        Reason.NO_TARGET, f"no node can take VM {vm.metadata.name}: {per_node}.", refusals
    )
