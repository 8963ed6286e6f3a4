"""The drain plan: which Migrations a cordoned node needs and which VMs stay, and why.

Pure: the reconciler (``handlers``) reads the cordoned Node names, every VM and every
Migration, asks ``plan`` and acts. Rules, in order, for each VM whose ``status.nodeName``
is a cordoned node:

1. ``spec.evictionStrategy`` None → it stays: Evictable=False, reason
   ``EvictionStrategyNone``.
2. Not running (``status.phase`` other than Running) → it stays: Evictable=False,
   reason ``NotMigratable`` (only a running guest is migrated live; a stopped VM keeps
   its placement).
3. An unfinished Migration of the VM exists (any name: the user's own, or ours) → nothing
   new; Evictable=True, reason ``Evicting``, naming it.
4. Our drain Migration (``drain_name``) exists and ended Failed or Cancelled → no retry
   (it would fail the same way): Evictable=False, reason ``NotMigratable`` with the
   Migration's own reason. Deleting that Migration asks for a new attempt.
5. Otherwise → create ``drain_name(vm, node)``: Evictable=True, reason ``Evicting``.

A VM on a node that is not cordoned gets no Evictable condition (``None``: the reconciler
removes it). Uncordoning therefore stops new Migrations; the ones already created run on
(cancel them with ``spec.cancel``). The parallel limits are the Migration reconciler's:
extras wait in Pending there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubevisor.api import groups, kinds, migrations
from kubevisor.api.conditions import Reason
from kubevisor.api.migrations import MigrationPhase
from kubevisor.api.virtualmachines import EvictionStrategy

Obj = Mapping[str, Any]
_MAX_NAME = 253


def drain_name(vm: str, node: str) -> str:
    """``<vm>-drain-<node>``; shortened with a hash when it exceeds a name's 253 bytes."""
    name = f"{vm}-drain-{node}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11].rstrip('-.')}-{digest}"


@dataclass(frozen=True)
class Evictable:
    """The Evictable condition a VM should carry."""

    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class NewMigration:
    """A Migration to create (the body comes from ``body``)."""

    namespace: str
    name: str
    vm: str
    vm_uid: str
    node: str


@dataclass(frozen=True)
class Plan:
    """What to create, and each VM's Evictable condition (None: remove ours)."""

    create: tuple[NewMigration, ...]
    evictable: Mapping[tuple[str, str], Evictable | None]


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _last_reason(migration: Obj) -> str:
    for c in _status(migration).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("message"):
            return f"{c.get('reason')}: {c.get('message')}"
    return str(_status(migration).get("phase"))


def plan(cordoned: Iterable[str], vms: Iterable[Obj], migration_objs: Iterable[Obj]) -> Plan:
    """The drain plan over the whole cluster (see the module docstring for the rules)."""
    drained = frozenset(cordoned)
    unfinished: dict[tuple[str, str], str] = {}
    by_name: dict[tuple[str, str], Obj] = {}
    for m in migration_objs:
        ns, name = str(_meta(m).get("namespace")), str(_meta(m).get("name"))
        by_name[(ns, name)] = m
        target_vm = str((m.get("spec") or {}).get("vmName"))
        if _status(m).get("phase") not in migrations.FINAL_PHASES:
            unfinished.setdefault((ns, target_vm), name)
    create: list[NewMigration] = []
    evictable: dict[tuple[str, str], Evictable | None] = {}
    for vm in vms:
        meta = _meta(vm)
        if meta.get("deletionTimestamp"):
            continue
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        key = (ns, name)
        node = _status(vm).get("nodeName")
        if node not in drained:
            evictable[key] = None
            continue
        strategy = (vm.get("spec") or {}).get("evictionStrategy", EvictionStrategy.NONE)
        phase = _status(vm).get("phase")
        ours = drain_name(name, str(node))
        if strategy != EvictionStrategy.LIVE_MIGRATE:
            evictable[key] = Evictable(
                "False",
                Reason.EVICTION_STRATEGY_NONE,
                f"node {node} is cordoned but spec.evictionStrategy is None, so the VM "
                "stays there; set it to LiveMigrate to move it away live.",
            )
        elif phase != "Running":
            evictable[key] = Evictable(
                "False",
                Reason.NOT_MIGRATABLE,
                f"node {node} is cordoned but the VM is {phase or 'not running'}; only a "
                "running VM is migrated live, so it stays placed there.",
            )
        elif key in unfinished:
            evictable[key] = Evictable(
                "True",
                Reason.EVICTING,
                f"node {node} is cordoned; Migration {unfinished[key]} moves the VM away.",
            )
        elif (ns, ours) in by_name:
            ended = by_name[(ns, ours)]
            if _status(ended).get("phase") == MigrationPhase.SUCCEEDED:
                # Succeeded but status.nodeName not moved yet: wait for the VM reconciler.
                evictable[key] = Evictable(
                    "True", Reason.EVICTING, f"Migration {ours} succeeded; the VM leaves {node}."
                )
            else:
                evictable[key] = Evictable(
                    "False",
                    Reason.NOT_MIGRATABLE,
                    f"node {node} is cordoned but Migration {ours} ended "
                    f"{_last_reason(ended)}; delete it to try again.",
                )
        else:
            create.append(NewMigration(ns, ours, name, str(meta.get("uid") or ""), str(node)))
            evictable[key] = Evictable(
                "True",
                Reason.EVICTING,
                f"node {node} is cordoned; Migration {ours} moves the VM away.",
            )
    return Plan(tuple(create), evictable)


def body(new: NewMigration) -> dict[str, Any]:
    """The Migration object for ``new``: labelled, owned by the VM (deleting the VM
    deletes it), target left to the controller's placement."""
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.MIGRATION.kind,
        "metadata": {
            "name": new.name,
            "namespace": new.namespace,
            "labels": {groups.LABEL_VM: new.vm, groups.LABEL_DRAIN_NODE: new.node},
            "ownerReferences": [
                {
                    "apiVersion": groups.API_VERSION,
                    "kind": kinds.VIRTUALMACHINE.kind,
                    "name": new.vm,
                    "uid": new.vm_uid,
                }
            ],
        },
        "spec": {"vmName": new.vm},
    }
