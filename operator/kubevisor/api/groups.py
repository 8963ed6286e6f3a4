"""API group, version and the well-known names stamped on objects.

One place for these strings so the controller, the agent and the CLI cannot drift apart
on a label key or a finalizer name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

GROUP: Final = "kubevisor.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

#: Category used by ``kubectl get kubevisor`` to list every kind at once.
CATEGORY: Final = "kubevisor"

#: Label on a VirtualMachine (and its helpers) naming the node it is placed on; the
#: agent watches with a label selector on it, so the filtering happens server-side.
LABEL_NODE: Final = "kubevisor.io/node"
#: Label on a VirtualMachine naming the node it is being live-migrated to: the target
#: node's agent watches with a label selector on it (as on LABEL_NODE for its own VMs).
LABEL_MIGRATION_TARGET: Final = "kubevisor.io/migration-target"
#: Labels the controller puts on a Migration once it has chosen the nodes (Scheduling):
#: the source and the target node's agents each watch Migrations with a label selector
#: on one of them, so each sees only the migrations it takes part in.
LABEL_MIGRATION_SOURCE_NODE: Final = "kubevisor.io/source-node"
LABEL_MIGRATION_TARGET_NODE: Final = "kubevisor.io/target-node"
#: Label on a Migration naming the VirtualMachine it moves (for ``kubectl get -l``).
LABEL_VM: Final = "kubevisor.io/vm"
#: On Migrations the drain creates: the cordoned node the VM leaves.
LABEL_DRAIN_NODE: Final = "kubevisor.io/drain-node"
#: Field manager of the drain's Evictable condition on VMs (not the VM reconciler's).
DRAIN_FIELD_MANAGER: Final = "kubevisor-controller-drain"
#: Label linking a desktop VM to its DesktopPool.
LABEL_POOL: Final = "kubevisor.io/pool"
#: Label linking a desktop VM to the DesktopClaim it is bound to.
LABEL_CLAIM: Final = "kubevisor.io/claim"
#: Label linking objects created from a VMTemplate back to it.
LABEL_TEMPLATE: Final = "kubevisor.io/template"

#: Annotation a user (or the CLI) bumps to ask for a restart of a running VM.
ANNOTATION_RESTART: Final = "kubevisor.io/restart"
TOKEN_MAX_LENGTH: Final = 253
"""The longest annotation value copied into status (status.restartToken's maxLength)."""


def annotation_token_error(value: str) -> str | None:
    """Why ``value`` (an annotation copied into status, e.g. kubevisor.io/restart) may not
    be copied, or None when it may (pure; the one rule, both sides use it)."""
    if len(value.encode()) > TOKEN_MAX_LENGTH:
        return f"is {len(value.encode())} bytes; at most {TOKEN_MAX_LENGTH} are allowed"
    if not value.isprintable():
        return "contains non-printable characters"
    return None


#: Annotation asking to restore a VM's own disks in place from a VMBackup of it (value:
#: the VMBackup's name). Needs the VM stopped; docs/backup.md, "Restore in place".
ANNOTATION_RESTORE: Final = "kubevisor.io/restore-from"

#: Finalizer that keeps an object until the agent has released node resources.
FINALIZER: Final = "kubevisor.io/finalizer"

#: Annotation asking to pause ("true") a running VM; removing it resumes.
ANNOTATION_PAUSED: Final = "kubevisor.io/paused"
#: Annotation carrying the desired power state (Running|Stopped) under runStrategy Manual.
ANNOTATION_POWER: Final = "kubevisor.io/power"

#: The agent's finalizer: its node resources (domain, taps, own disks) are still there.
AGENT_FINALIZER: Final = "kubevisor.io/agent-cleanup"

#: The values the power annotations take (the CLI writes exactly these).
PAUSED_VALUES: Final = frozenset({"true", "false"})
POWER_VALUES: Final = frozenset({"Running", "Stopped"})


def annotation_errors(annotations: Mapping[str, str]) -> dict[str, str]:
    """Annotation -> why the controller ignores its value, for the annotations it reads
    (restart, paused, power); empty when all are usable (pure).

    An ignored value is not silent: the controller reports it as a condition with reason
    InvalidAnnotation and a Warning Event.
    """
    errors: dict[str, str] = {}
    restart = annotations.get(ANNOTATION_RESTART)
    if restart is not None and (why := annotation_token_error(restart)) is not None:
        errors[ANNOTATION_RESTART] = why
    for key, allowed in ((ANNOTATION_PAUSED, PAUSED_VALUES), (ANNOTATION_POWER, POWER_VALUES)):
        value = annotations.get(key)
        if value is not None and value not in allowed:
            shown = value if len(value) <= 40 else value[:40] + "..."
            errors[key] = f"is {shown!r}; expected one of {', '.join(sorted(allowed))}"
    return errors
