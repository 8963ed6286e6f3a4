"""StorageBackend: a cluster-wide place where VM disks can live (docs/storage.md).

``type`` says how a node reaches it: ``local`` (each node's own disk directory),
``shared`` (a directory every node mounts at the same path), ``nfs`` (an export QEMU opens
with its own NFS client, libnfs) or ``iscsi`` (a LUN on a target QEMU logs in to with its
own initiator, libiscsi; CHAP credentials from a Secret). A template disk names one in
``backend``. Each agent reports the backends it reaches in its Lease (``nodes.Capacity
.storage_backends``); placement and the migration preconditions read that.

One rule in one place: which fields each type has is :data:`FIELDS_OF` — the CEL rules
and the pydantic check are both built from it, so the API server and the runtime accept
the same objects; :func:`migrates_without_copy` and :func:`is_lun` are what the agent and
the controller ask of a backend.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions

BackendType = Literal["local", "shared", "nfs", "iscsi"]

#: The type-specific fields (wire names) each type must have; every other one of
#: :data:`TYPED_FIELDS` it must not have.
FIELDS_OF: Final[dict[str, frozenset[str]]] = {
    "local": frozenset(),
    "shared": frozenset(),
    "nfs": frozenset({"nfs"}),
    "iscsi": frozenset({"iscsi"}),
}
TYPED_FIELDS: Final = frozenset({"nfs", "iscsi"})

#: iSCSI Qualified Name, RFC 3720 (``iqn.YYYY-MM.reversed.domain[:anything]``).
IQN_PATTERN: Final = r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[^\s]+)?$"
#: A host name or an IPv4 address (what QEMU's clients connect to).
HOST_PATTERN: Final = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"

Host = Annotated[str, Field(pattern=HOST_PATTERN, min_length=1, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]


class NFSSource(common.Model):
    """An NFS export disk images are files on."""

    server: Host
    """NFS server (host name or IPv4 address)."""
    export: common.PathString
    """Exported path, e.g. /exports/vms; disk images go to <export>/<namespace>/<vm>/."""


class ISCSISource(common.Model):
    """A LUN on an iSCSI target: the disk is the whole LUN (raw, no linked clones)."""

    portal: Host
    """Target portal address (host name or IPv4 address)."""
    port: Port = 3260
    """Target portal TCP port."""
    iqn: Annotated[str, Field(pattern=IQN_PATTERN, max_length=223)]
    """Target IQN, e.g. iqn.2026-12.io.example:vms."""
    lun: Annotated[int, Field(ge=0, le=16383)] = 1
    """Logical unit number on the target (tgt's LUN 0 is its controller)."""
    chap_secret_ref: common.LocalObjectReference | None = None
    """Secret (in the agent's namespace) with keys username and password for CHAP."""


def _type_rule(kind: str) -> dict[str, str]:
    must = FIELDS_OF[kind]
    parts = [f"has(self.{f})" if f in must else f"!has(self.{f})" for f in sorted(TYPED_FIELDS)]
    have = ", ".join(sorted(must)) or "no nfs or iscsi"
    return common.rule(
        f"self.type != '{kind}' || ({' && '.join(parts)})",
        f"type {kind} takes {have} settings",
    )


class StorageBackendSpec(common.Model):
    """Where disks live and how nodes reach it."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(*(_type_rule(kind) for kind in FIELDS_OF)),
    )

    type: BackendType
    """local | shared | nfs | iscsi."""
    nfs: NFSSource | None = None
    """The export (type nfs only)."""
    iscsi: ISCSISource | None = None
    """The target and LUN (type iscsi only)."""

    @model_validator(mode="after")
    def _fields_of_type(self) -> Self:
        must = FIELDS_OF[self.type]
        for name in TYPED_FIELDS:
            if (getattr(self, name) is not None) != (name in must):
                raise ValueError(
                    f"type {self.type} takes {', '.join(sorted(must)) or 'no nfs or iscsi'} "
                    "settings"
                )
        return self


class StorageBackendPhase(StrEnum):
    """Lifecycle phase of a backend."""

    ACCEPTED = "Accepted"
    """The controller read the spec; nodes report whether they reach it."""


class StorageBackendStatus(conditions.Status):
    """Observed state."""

    phase: StorageBackendPhase | None = None
    """Accepted once the controller has read the current generation."""


class StorageBackend(common.Resource):
    """A cluster-wide place where VM disks can live."""

    kind: Literal["StorageBackend"] = "StorageBackend"
    """Always StorageBackend."""
    spec: StorageBackendSpec
    """Where disks live and how nodes reach it."""
    status: StorageBackendStatus | None = None
    """Observed state."""


def migrates_without_copy(spec: StorageBackendSpec) -> bool:
    """True when every node reaching the backend sees the same bytes (pure): a live
    migration then moves only memory. Only ``local`` needs block copy."""
    return spec.type != "local"


def is_lun(spec: StorageBackendSpec) -> bool:
    """True for a backend whose disk is a whole SCSI LUN (``device: lun`` possible)."""
    return spec.type == "iscsi"
