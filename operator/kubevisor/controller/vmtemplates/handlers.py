"""VMTemplate handlers: report whether a template is usable, and wake the VMs using it.

A template change never edits a running VM: the VMs re-resolve, and a running one
reports RestartRequired (see ``vms.phases.record_machine``). A VM waiting for a template
that did not exist is placed as soon as the template appears. Which VMs use a template
is the VM reconciler's knowledge; ``registry`` passes its wake-up in as ``on_change``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import kinds
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running
from kubevisor.controller.vmtemplates import status

#: The kind served here (names from the one registry of kinds).
TEMPLATE = kinds.VMTEMPLATE


class VMTemplates:
    """The VMTemplate handlers of one controller process."""

    def __init__(
        self, rt: running.Runtime, *, on_change: Callable[[str, str, dict[str, Any] | None], None]
    ) -> None:
        self._rt = rt
        self._on_change = on_change
        """(namespace, template, body or None when deleted): a template appeared,
        changed or went away."""

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(TEMPLATE.plural, self.on_event)]

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        """Report the template's status (once per generation), then wake its VMs."""
        if type != "DELETED":
            current = dict(body.get("status") or {})
            generation = int((body.get("metadata") or {}).get("generation") or 0)
            if current.get("observedGeneration") != generation:
                wanted = status.template_status(
                    dict(body.get("spec") or {}),
                    current,
                    generation=generation,
                    now=datetime.now(UTC),
                )
                await self._rt.client.apply_status(
                    TEMPLATE.plural, TEMPLATE.kind, namespace, name, wanted
                )
        self._on_change(namespace, name, None if type == "DELETED" else body)
