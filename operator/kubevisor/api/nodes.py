"""The node contract: one ``coordination.k8s.io`` Lease per node, written by its agent and
read by the controller (docs/architecture.md, "Nodes").

The Lease carries the node's labels, its capacity and its current network segments as
annotations. Both sides import this module: the agent builds its Lease with
:func:`lease_body` / :func:`renewal_patch`, the controller reads it with :func:`parse`,
so a key, a label or the JSON shape cannot drift apart between writer and reader.

Why a Lease and annotations instead of a custom Node kind: kubelet does the same, the
controller reads one object per node, and the heartbeat write is tiny.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ConfigDict, Field, ValidationError

from kubevisor.api import common

#: Where the node Leases live. The Helm chart sets ``KUBEVISOR_LEASE_NAMESPACE`` to the
#: release namespace for controller and agent alike; read once at import, so a process has
#: one answer for its lifetime.
LEASE_NAMESPACE: Final = os.environ.get("KUBEVISOR_LEASE_NAMESPACE") or "kubevisor-system"
#: How long a Lease holds without renewal before the controller treats the node as lost.
LEASE_DURATION_S: Final = 30
#: Label on every agent's Lease (value ``"true"``), next to the node's own labels.
LABEL_AGENT: Final = "kubevisor.io/agent"
#: The label selector that lists agents' Leases (and nothing else in the namespace).
AGENT_SELECTOR: Final = f"{LABEL_AGENT}=true"
#: Annotation with the node's :class:`Capacity` as JSON.
ANNOTATION_CAPACITY: Final = "kubevisor.io/capacity"
#: Annotation with the node's current network segments as a sorted JSON list.
ANNOTATION_SEGMENTS: Final = "kubevisor.io/segments"
#: Annotation with the round-trip times the node's agent measured to its peers, as a JSON
#: object ``{"<peer node>": <milliseconds>}`` (optional: absent means none measured). A
#: separate annotation, not part of :class:`Capacity`, so a changed RTT does not rewrite
#: the capacity; the agent reports only meaningful changes (``agent/rttprobing.py``).
ANNOTATION_RTTS: Final = "kubevisor.io/rtts"
#: Capacity keys written only when set, so agents that do not report them keep writing
#: the same annotation as before these fields existed.
_OPTIONAL_CAPACITY_KEYS: Final = (
    "cpuModels",
    "hostCPUModel",
    "localStorage",
    "storageBackends",
    "managementAddress",
)


class Capacity(common.Model):
    """What the node offers, as the controller's placement reads it.

    Frozen so equal capacities compare equal and the agent can tell "unchanged" apart
    without writing. ``networks`` defaults to ``("default",)`` for an agent that names
    none; a Lease whose annotation lacks the key parses as no networks (see
    :func:`parse_capacity`).
    """

    model_config = ConfigDict(frozen=True)

    cpu: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    networks: tuple[str, ...] = ("default",)
    shared_storage: str | None = None
    local_storage: str | None = None
    """The agent's state directory (``--state-dir``): node-local disks live under its
    ``disks/``. A migration's source rewrites the paths of node-local disks to this
    directory for block copy (nodes may keep their state in different places)."""
    migration_uri: str | None = Field(default=None, alias="migrationURI")
    address: str | None = None
    management_address: str | None = None
    """The address of the node's management interface (``--management-interface``), when
    it has one: migration streams to this node are sent there (and its libvirtd is
    reached there), never over the VMs' LANs."""
    cpu_models: tuple[str, ...] = ()
    """CPU models libvirt can run on this host (domain capabilities, ``usable='yes'``);
    empty when the agent does not report them (migration then does not check)."""
    host_cpu_model: str | None = Field(default=None, alias="hostCPUModel")
    """The model libvirt's host-model expands to here; a VM with host-model or
    host-passthrough moves only between nodes reporting the same one."""
    storage_backends: Mapping[str, str] = Field(default_factory=dict)
    """StorageBackends this node reaches now, name -> type (``storagebackends``): a VM
    whose disks name a backend runs only where it is listed, and a disk on a backend
    other than ``local`` migrates without block copy."""


#: A node that published no readable capacity: nothing fits there.
NO_CAPACITY: Final = Capacity(networks=())


def capacity_json(capacity: Capacity) -> str:
    """The capacity annotation value: every key, networks and keys sorted, so equal
    capacities give equal strings and the agent writes only on a real change."""
    wire = capacity.model_dump(mode="json", by_alias=True)
    wire["networks"] = sorted(wire["networks"])
    for key in _OPTIONAL_CAPACITY_KEYS:
        if not wire[key]:
            del wire[key]
    if "cpuModels" in wire:
        wire["cpuModels"] = sorted(wire["cpuModels"])
    return json.dumps(wire, sort_keys=True, separators=(",", ":"))


def parse_capacity(text: str | None) -> Capacity:
    """The capacity an annotation value describes; :data:`NO_CAPACITY` when it is
    missing or unreadable (a broken agent must not make the controller fail). A ``null``
    value counts as absent, and absent networks as none."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return NO_CAPACITY
    if not isinstance(raw, dict):
        return NO_CAPACITY
    data = {k: v for k, v in raw.items() if v is not None}
    data.setdefault("networks", [])
    try:
        return Capacity.model_validate(data)
    except ValidationError:
        return NO_CAPACITY


def segments_json(segments: Iterable[str]) -> str:
    """The segments annotation value (sorted JSON list)."""
    return json.dumps(sorted(segments), separators=(",", ":"))


def parse_segments(text: str | None) -> frozenset[str]:
    """The segments an annotation value lists; empty when missing or unreadable."""
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        return frozenset()
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(str(s) for s in raw)


def rtts_json(rtts: Mapping[str, float]) -> str:
    """The RTT annotation value: peers sorted, milliseconds rounded to 0.01 ms."""
    return json.dumps(
        {peer: round(float(ms), 2) for peer, ms in sorted(rtts.items())},
        separators=(",", ":"),
    )


def parse_rtts(text: str | None) -> dict[str, float]:
    """The RTTs an annotation value lists; entries that are not a non-negative number are
    dropped, and a missing or unreadable value reads as none measured."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        str(peer): float(ms)
        for peer, ms in raw.items()
        if isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0
    }


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime wire format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    """A timestamp as the API (or the Python client) gives it; None when unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class NodeLease:
    """One node as its Lease describes it (what :func:`parse` returns)."""

    name: str
    labels: Mapping[str, str]
    """The Lease's labels: the node's own plus :data:`LABEL_AGENT`."""
    capacity: Capacity
    segments: frozenset[str]
    renew_time: datetime | None
    duration_s: int
    rtts_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Round-trip times this node's agent measured to its peers (:data:`ANNOTATION_RTTS`)."""

    def alive(self, now: datetime) -> bool:
        """Renewed within ``leaseDurationSeconds`` of ``now``; else the node is lost."""
        if self.renew_time is None:
            return False
        return self.renew_time + timedelta(seconds=self.duration_s) > now


def parse(lease: Mapping[str, Any]) -> NodeLease:
    """A node from its agent's Lease (a raw API object, camelCase). Unreadable
    annotations leave the node with no capacity and no segments."""
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    annotations = meta.get("annotations") or {}
    return NodeLease(
        name=str(meta.get("name")),
        labels=dict(meta.get("labels") or {}),
        capacity=parse_capacity(annotations.get(ANNOTATION_CAPACITY)),
        segments=parse_segments(annotations.get(ANNOTATION_SEGMENTS)),
        renew_time=parse_time(spec.get("renewTime")),
        duration_s=int(spec.get("leaseDurationSeconds") or 0),
        rtts_ms=parse_rtts(annotations.get(ANNOTATION_RTTS)),
    )


def node_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a node is judged by: its own plus :data:`LABEL_AGENT`, exactly what its
    Lease carries. The controller reads them from the Lease and the agent computes them
    with this, so both sides give a nodeSelector the same labels (``vrfs.selects_node``)."""
    return {**labels, LABEL_AGENT: "true"}


_labels = node_labels


def _annotations(
    capacity: Capacity, segments: Iterable[str], rtts: Mapping[str, float] | None
) -> dict[str, str]:
    out = {
        ANNOTATION_CAPACITY: capacity_json(capacity),
        ANNOTATION_SEGMENTS: segments_json(segments),
    }
    if rtts is not None:
        out[ANNOTATION_RTTS] = rtts_json(rtts)
    return out


def lease_body(
    *,
    node: str,
    labels: Mapping[str, str],
    capacity: Capacity,
    segments: Iterable[str],
    now: datetime,
    namespace: str = LEASE_NAMESPACE,
    duration_s: int = LEASE_DURATION_S,
    rtts: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The full Lease object for creation (pure). ``rtts`` None leaves the RTT annotation
    out (an agent that does not probe)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": namespace,
            "labels": _labels(labels),
            "annotations": _annotations(capacity, segments, rtts),
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": duration_s,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
        },
    }


def renewal_patch(
    *,
    current: Mapping[str, Any],
    node: str,
    labels: Mapping[str, str],
    capacity: Capacity,
    segments: Iterable[str],
    now: datetime,
    rtts: Mapping[str, float] | None = None,
    duration_s: int = LEASE_DURATION_S,
) -> dict[str, Any]:
    """A merge patch renewing the Lease ``current``; metadata only where it differs, so a
    quiet node costs one small write per interval (pure). ``rtts`` None leaves the RTT
    annotation as it is."""
    patch: dict[str, Any] = {
        "spec": {
            "renewTime": micro_time(now),
            "holderIdentity": node,
            "leaseDurationSeconds": duration_s,
        }
    }
    metadata = current.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    current_labels = metadata.get("labels") or {}
    changed_annotations = {
        k: v for k, v in _annotations(capacity, segments, rtts).items() if annotations.get(k) != v
    }
    changed_labels = {k: v for k, v in _labels(labels).items() if current_labels.get(k) != v}
    if changed_annotations or changed_labels:
        patch["metadata"] = {}
        if changed_annotations:
            patch["metadata"]["annotations"] = changed_annotations
        if changed_labels:
            patch["metadata"]["labels"] = changed_labels
    return patch
