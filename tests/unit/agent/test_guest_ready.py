"""GuestReady (``api/guestready``, ``vms.reporting``): the agent reports it only while
the guest's console log shows a ready line after the guest's last boot line, and keeps
looking (another pass soon) while a Running VM with a serial console is not ready yet,
for a bounded time. The console log is a real file; libvirt and the API server are
stand-ins (``FakeHypervisor``: no domain; ``FakeWriter``: returns what it is given)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.vms import handling, reporting, statuses
from kubevisor.api import conditions, guestready

pytestmark = pytest.mark.unit

Phase = statuses.Phase
GUEST = conditions.ConditionType.GUEST_READY


@pytest.mark.parametrize(
    ("case", "console", "want"),
    [
        ("empty", "", False),
        ("booting", "kubevisor-appguest: booted kernel=6.1\r\n", False),
        ("sshd up, not ready", "kubevisor-appguest: booted\r\nkubevisor-appguest: sshd up\r\n",
         False),
        ("ready", "kubevisor-appguest: booted\r\nkubevisor-appguest: sshd up\r\n"
         "kubevisor-appguest: ready\r\n", True),
        ("the tiny guest", "kubevisor-guest: booted kernel=6.1\nkubevisor-guest: ready\n", True),
        ("ready of the boot before a restart",
         "kubevisor-guest: booted\nkubevisor-guest: ready\n[ 0.0] x\nkubevisor-guest: booted\n",
         False),
        ("ready again after the restart",
         "kubevisor-guest: booted\nkubevisor-guest: ready\nkubevisor-guest: booted\n"
         "kubevisor-guest: ready\n", True),
        ("tail without the boot line", "...\nkubevisor-guest: ready\n", True),
        ("a word that only starts with ready", "kubevisor-guest: readying\n", False),
        ("mid-line after kernel output", "[ 3.1] eth0: up kubevisor-guest: ready\n", True),
    ],
)  # fmt: skip
def test_ready_in(case: str, console: str, want: bool) -> None:
    assert guestready.ready_in(console) is want, case


@pytest.mark.parametrize(
    ("running_for", "want"),
    [(None, True), (0.0, True), (guestready.WAIT_SECONDS - 1, True),
     (guestready.WAIT_SECONDS, False)],
)  # fmt: skip
def test_keep_looking_is_bounded(running_for: float | None, want: bool) -> None:
    assert guestready.keep_looking(running_for) is want


def _scope(*, serial: bool = True, status: dict[str, Any] | None = None) -> handling.Scope:
    machine = {"cpu": {"cores": 1}, "memory": "128Mi", "disks": [{"name": "r", "size": "1Gi"}],
               "console": {"serial": serial}}  # fmt: skip
    obj = {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "generation": 1},
           "status": {**(status or {}), "machine": machine}}  # fmt: skip
    return handling.scope_of(("ns", "vm"), obj, None)


class FakeHypervisor:
    async def lookup(self, name: str) -> None:
        return None


class FakeWriter:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    async def apply(self, *, namespace: str, name: str, own: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(own)
        return {"status": own}


def _reporter(tmp_path: Path, rechecks: list[float]) -> tuple[reporting.Reporter, FakeWriter]:
    writer = FakeWriter()
    reporter = reporting.Reporter(
        FakeHypervisor(),  # type: ignore[arg-type]
        writer,  # type: ignore[arg-type]
        console_dir=tmp_path,
        on_written=lambda key, obj: None,
        recheck=lambda key, after: rechecks.append(after),
    )
    return reporter, writer


async def test_reported_only_once_the_console_says_ready(tmp_path: Path) -> None:
    scope = _scope()
    log = handling.console_log_path(tmp_path, scope.identity.domain_name)
    log.write_text("kubevisor-appguest: booted\r\nkubevisor-appguest: sshd up\r\n")
    rechecks: list[float] = []
    reporter, writer = _reporter(tmp_path, rechecks)
    assert await reporter.report(scope, Phase.RUNNING)
    assert conditions.get_condition(writer.applied[-1]["conditions"], GUEST) is None
    assert rechecks == [guestready.RECHECK_SECONDS], "a Running guest not ready is looked at again"
    with log.open("a") as f:
        f.write("kubevisor-appguest: ready\r\n")
    scope.status = writer.applied[-1]
    assert await reporter.report(scope, Phase.RUNNING)
    got = conditions.get_condition(writer.applied[-1]["conditions"], GUEST)
    assert got is not None and got["status"] == "True" and got["reason"] == "AsExpected"
    assert rechecks == [guestready.RECHECK_SECONDS], "no more passes once it is ready"
    scope.status = writer.applied[-1]
    assert await reporter.report(scope, Phase.STOPPING)
    assert conditions.get_condition(writer.applied[-1]["conditions"], GUEST) is None


async def test_not_looked_for_without_a_serial_console_or_after_the_wait(tmp_path: Path) -> None:
    rechecks: list[float] = []
    reporter, writer = _reporter(tmp_path, rechecks)
    await reporter.report(_scope(serial=False), Phase.RUNNING)
    long_ago = conditions.format_time(datetime(2020, 1, 1, tzinfo=UTC))
    scope = _scope(status={"runningAt": long_ago, "startedAt": long_ago})
    scope.started_at = long_ago
    await reporter.report(scope, Phase.RUNNING)
    assert rechecks == []
    assert all(conditions.get_condition(o["conditions"], GUEST) is None for o in writer.applied)
