"""The agent's status fields and the no-op apply check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubevisor.agent.vms import statuses as status

pytestmark = pytest.mark.unit

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_running_report_is_ready_and_second_apply_is_noop() -> None:
    report = status.Report(
        phase="Running",
        interfaces=({"name": "eth0", "mac": "52:54:00:00:00:01"},),
        display={"type": "vnc", "host": "10.77.0.11", "port": 5900},
        domain_uuid="u",
        network_ready=True,
    )
    controller_fields = {
        "nodeName": "node-1",
        "conditions": [{"type": "Scheduled", "status": "True", "reason": "Scheduled"}],
    }
    own = status.desired_status(report, current=controller_fields, generation=1, now=NOW)
    assert own["phase"] == "Running"
    assert [c["type"] for c in own["conditions"]] == ["Ready", "NetworkReady"]
    assert own["conditions"][0]["status"] == "True"
    assert "nodeName" not in own  # never written by the agent
    assert status.needs_apply(own, controller_fields)
    merged = {
        **controller_fields,
        **own,
        "conditions": controller_fields["conditions"] + own["conditions"],
    }
    later = datetime(2030, 1, 2, tzinfo=UTC)
    again = status.desired_status(report, current=merged, generation=1, now=later)
    assert not status.needs_apply(again, merged)  # transition time carried over


def test_phase_change_and_dropped_condition_need_apply() -> None:
    running = status.desired_status(
        status.Report(phase="Running", network_ready=True), current={}, generation=1, now=NOW
    )
    stopped = status.desired_status(
        status.Report(phase="Stopped"), current=running, generation=1, now=NOW
    )
    assert stopped["conditions"][0]["status"] == "False"
    assert stopped["conditions"][0]["reason"] == "Stopped"
    assert status.needs_apply(stopped, running)
