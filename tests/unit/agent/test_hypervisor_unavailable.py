"""What a VM reports while its node's libvirtd is unreachable (agent/vms/reporting):
phase Unknown, Ready=False with reason HypervisorUnavailable and the pass's sentence,
and every other field the agent reported before kept (nothing about the domain is known,
so nothing is taken back). The writer is a stand-in recording the apply (the real one is
an SSA call; tests/e2e/test_hypervisor_reconnect.py runs the whole thing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.vms import handling, reporting
from kubevisor.api import conditions

pytestmark = pytest.mark.unit

BEFORE = {
    "phase": "Running",
    "domainUUID": "u-1",
    "startedAt": "2026-12-03T10:00:00Z",
    "runningAt": "2026-12-03T10:00:05Z",
    "consoleLog": "/var/lib/kubevisor/console/ns_vm.log",
    "interfaces": [{"name": "eth0", "network": "default", "mac": "52:54:00:00:00:01"}],
    "display": {"type": "vnc", "host": "127.0.0.1", "port": 5900},
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Running", "message": "",
         "lastTransitionTime": "2026-12-03T10:00:05Z"},
        {"type": "NetworkReady", "status": "True", "reason": "AsExpected", "message": "",
         "lastTransitionTime": "2026-12-03T10:00:05Z"},
    ],
}  # fmt: skip


class RecordingWriter:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    async def apply(self, *, namespace: str, name: str, own: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(own)
        return {"metadata": {"name": name, "namespace": namespace}, "status": own}


async def test_unavailable_reports_unknown_and_keeps_what_was_known() -> None:
    writer = RecordingWriter()
    written: list[Any] = []
    reporter = reporting.Reporter(
        None,  # type: ignore[arg-type]  # not looked up: nothing can be asked of libvirt
        writer,  # type: ignore[arg-type]
        console_dir=Path("/var/lib/kubevisor/console"),
        on_written=lambda key, obj: written.append(key),
    )
    obj = {"metadata": {"name": "vm", "namespace": "ns", "uid": "x", "generation": 2},
           "status": BEFORE}  # fmt: skip
    scope = handling.scope_of(("ns", "vm"), obj, None)
    scope.ready_reason = conditions.Reason.HYPERVISOR_UNAVAILABLE
    scope.message = "node n1 cannot reach its hypervisor: gone"
    assert await reporter.report_unavailable(scope) is True
    (own,) = writer.applied
    assert own["phase"] == "Unknown"
    for field in ("domainUUID", "startedAt", "runningAt", "consoleLog", "interfaces", "display"):
        assert own[field] == BEFORE[field], field
    ready = next(c for c in own["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "HypervisorUnavailable")
    assert ready["message"] == scope.message
    assert any(c["type"] == "NetworkReady" for c in own["conditions"])  # kept, not dropped
    assert written == [("ns", "vm")]

    # the same again (the tick while still unreachable): no second write
    again = handling.scope_of(("ns", "vm"), {**obj, "status": own}, None)
    again.ready_reason, again.message = scope.ready_reason, scope.message
    assert await reporter.report_unavailable(again) is False
    assert len(writer.applied) == 1
