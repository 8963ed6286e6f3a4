"""CLI verbs as the patches they send (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.cli import main, rendering

pytestmark = pytest.mark.unit


def _vm(strategy: str = "Always", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": {"runStrategy": strategy}, "status": status}


@pytest.mark.parametrize(
    ("verb", "vm", "expected"),
    [
        ("start", _vm("Halted"), {"spec": {"runStrategy": "Always"}}),
        ("stop", _vm("Always"), {"spec": {"runStrategy": "Halted"}}),
        ("stop", _vm("Once"), {"spec": {"runStrategy": "Halted"}}),
        ("stop", _vm("Manual"), {"metadata": {"annotations": {"kubevisor.io/power": "Stopped"}}}),
        ("start", _vm("Manual"), {"metadata": {"annotations": {"kubevisor.io/power": "Running"}}}),
        ("pause", _vm(), {"metadata": {"annotations": {"kubevisor.io/paused": "true"}}}),
        ("unpause", _vm(), {"metadata": {"annotations": {"kubevisor.io/paused": None}}}),
    ],
)
def test_power_patch(verb: str, vm: dict[str, Any], expected: dict[str, Any]) -> None:
    assert main.power_patch(verb, vm) == expected


@pytest.mark.parametrize(
    "vm",
    [
        _vm("Once", phase="Succeeded", desiredState="Stopped"),
        _vm("RerunOnFailure", phase="Succeeded", desiredState="Stopped"),
        _vm("Manual", phase="Succeeded", desiredState="Stopped"),
    ],
)
def test_start_after_guest_stopped_requests_a_restart(vm: dict[str, Any]) -> None:
    notes = main.power_patch("start", vm)["metadata"]["annotations"]
    token = notes["kubevisor.io/restart"]
    assert token and "#" not in token


def test_restart_tokens_are_new_each_time() -> None:
    a = main.power_patch("restart", _vm())["metadata"]["annotations"]["kubevisor.io/restart"]
    b = main.power_patch("restart", _vm())["metadata"]["annotations"]["kubevisor.io/restart"]
    assert a != b


@pytest.mark.parametrize(
    ("verb", "vm"), [("start", _vm("Always", phase="Running")), ("stop", _vm("Halted"))]
)
def test_noop_verbs_say_so(verb: str, vm: dict[str, Any]) -> None:
    with pytest.raises(main.CLIError, match="already"):
        main.power_patch(verb, vm)


def test_table_and_describe() -> None:
    vm = _vm(
        phase="Running",
        desiredState="Running",
        nodeName="n1",
        interfaces=[{"name": "eth0", "ipAddress": "10.0.0.5"}],
        machine={"cpu": {"cores": 1}, "memory": "256Mi", "nics": [{"name": "eth0", "mac": "m"}]},
        conditions=[{"type": "Scheduled", "status": "True", "reason": "Scheduled", "message": ""}],
    )
    text = rendering.describe(vm)
    assert "web" in text and "10.0.0.5" in text and "n1" in text
    assert "eth0=m" in text and "Scheduled=True (Scheduled)" in text


def test_parser_accepts_kubectl_style() -> None:
    args = main.parser().parse_args(["restart", "web", "-n", "prod"])
    assert (args.verb, args.name, args.namespace) == ("restart", "web", "prod")


@pytest.mark.parametrize(
    ("argv", "as_name", "in_place"),
    [(["restore", "b1", "--as", "new"], "new", None),
     (["restore", "b1", "--in-place", "web"], None, "web")],
)  # fmt: skip
def test_restore_as_a_new_vm_or_in_place(
    argv: list[str], as_name: str | None, in_place: str | None
) -> None:
    args = main.parser().parse_args(argv)
    assert (args.as_name, args.in_place) == (as_name, in_place)


@pytest.mark.parametrize(
    "argv", [["restore", "b1"], ["restore", "b1", "--as", "x", "--in-place", "y"]]
)
def test_restore_needs_exactly_one_of_as_or_in_place(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main.parser().parse_args(argv)
