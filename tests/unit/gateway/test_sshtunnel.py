"""The ssh path's pure rules: tickets (``api/vmaccess.check_ticket``: what the CLI writes
the gateway admits, once, and nothing else), the guest's link-local address, where the
gateway dials (``gateway/sshtunnel.target_of``), and its admission over a VM read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubevisor.api import vmaccess
from kubevisor.cli import remote
from kubevisor.gateway import dialing, sshtunnel

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-" + "x" * 30
NOW = 1_000_000.0


def _notes(secret: str = SECRET, expires_at: int = int(NOW) + 60) -> dict[str, str]:
    key, value = vmaccess.ticket_annotation(secret, expires_at=expires_at)
    return {key: value, "other": "x"}


def test_a_written_ticket_admits() -> None:
    digest, expires_at = vmaccess.check_ticket(_notes(), SECRET, now=NOW)
    assert len(digest) == 64 and expires_at == int(NOW) + 60
    assert SECRET not in str(_notes())  # only the hash is stored on the VM


@pytest.mark.parametrize(
    ("notes", "secret", "reason"),
    [
        (_notes(), "short", "Malformed"),
        (_notes(), "y" * 40, "NoTicket"),  # another secret
        ({}, SECRET, "NoTicket"),
        (_notes(expires_at=int(NOW)), SECRET, "Expired"),
        (_notes(expires_at=int(NOW) + vmaccess.MAX_TICKET_SECONDS + 5), SECRET, "TooLong"),
        ({k: v.split(".")[0] + ".soon" for k, v in _notes().items()}, SECRET, "Malformed"),
        # the right key, but the stored digest is another secret's
        ({next(iter(_notes())): _notes("z" * 40)[next(iter(_notes("z" * 40)))]}, SECRET,
         "NoTicket"),
    ],
)  # fmt: skip
def test_tickets_refused(notes: dict[str, str], secret: str, reason: str) -> None:
    with pytest.raises(vmaccess.TicketRefused) as caught:
        vmaccess.check_ticket(notes, secret, now=NOW)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("mac", "address"),
    [
        ("52:54:00:12:34:56", "fe80::5054:ff:fe12:3456"),
        ("02:00:00:00:00:01", "fe80::0:ff:fe00:1"),
        ("00:16:3E:AB:CD:EF", "fe80::216:3eff:feab:cdef"),
    ],
)
def test_link_local(mac: str, address: str) -> None:
    import ipaddress

    assert ipaddress.ip_address(vmaccess.link_local(mac)) == ipaddress.ip_address(address)


def test_link_local_refuses_a_non_mac() -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        vmaccess.link_local("52:54:00:12:34")


def _vm(phase: str | None = "Running", **nic: str) -> dict[str, Any]:
    nics = [nic] if nic else []
    return {
        "metadata": {"name": "v", "namespace": "default", "uid": "0123456789ab",
                     "annotations": _notes()},
        "status": {"phase": phase, "nodeName": "node-1", "interfaces": nics},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("vm", "expected"),
    [
        (_vm(mac="52:54:00:12:34:56", tap="kvt1"),
         sshtunnel.Target("node-1", "fe80::5054:ff:fe12:3456", "kvt1")),
        (_vm(mac="52:54:00:12:34:56", tap="kvt1", ipAddress="10.77.0.120"),
         sshtunnel.Target("node-1", "10.77.0.120", None)),
        (_vm("Stopped", mac="52:54:00:12:34:56", tap="kvt1"), "NotRunning"),
        (_vm(None), "NotRunning"),
        (_vm(), "NoInterface"),
        (_vm(mac="52:54:00:12:34:56"), "NoAddress"),
        (_vm(mac="nope", tap="kvt1"), "NoAddress"),
    ],
)  # fmt: skip
def test_target_of(vm: dict[str, Any], expected: sshtunnel.Target | str) -> None:
    got = sshtunnel.target_of(vm)
    if isinstance(expected, str):
        assert isinstance(got, sshtunnel.Refused) and got.reason == expected
    else:
        assert got == expected


class _VMs:
    def __init__(self, vm: dict[str, Any] | None) -> None:
        self.obj = vm

    async def vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj


def test_admission_uses_a_ticket_once() -> None:
    tunnel = sshtunnel.SSHTunnel(_VMs(_vm(mac="52:54:00:12:34:56", tap="kvt1")),
                                 dialer=dialing.Dialer(), clock=lambda: NOW)  # fmt: skip
    query = {"namespace": "default", "vm": "v", vmaccess.TICKET_QUERY: SECRET}
    first = asyncio.run(tunnel.admit(query))
    again = asyncio.run(tunnel.admit(query))
    assert isinstance(first, sshtunnel.Target)
    assert isinstance(again, sshtunnel.Refused) and again.reason == "Replayed"


@pytest.mark.parametrize(
    ("query", "vm", "reason"),
    [
        ({"vm": "v", "ticket": SECRET}, _vm(), "Malformed"),
        ({"namespace": "default", "vm": "v", "ticket": SECRET}, None, "VMNotFound"),
        ({"namespace": "default", "vm": "v", "ticket": "w" * 40}, _vm(), "NoTicket"),
        ({"namespace": "default", "vm": "v", "ticket": SECRET}, _vm("Paused"), "NotRunning"),
    ],
)
def test_admission_refusals(query: dict[str, str], vm: dict[str, Any] | None, reason: str) -> None:
    tunnel = sshtunnel.SSHTunnel(_VMs(vm), dialer=dialing.Dialer(), clock=lambda: NOW)
    got = asyncio.run(tunnel.admit(query))
    assert isinstance(got, sshtunnel.Refused) and got.reason == reason


def test_cli_ssh_argv_and_urls(tmp_path: Any) -> None:
    vm = _vm()
    argv = remote.ssh_argv(vm, proxy=["py", "-m", "kubevisor.cli.main", "_ssh-proxy", "v"],
                           x11=True, identity="/k", user="root", known_hosts=tmp_path / "kh",
                           command=["echo", "hi"])  # fmt: skip
    assert argv[0] == "ssh" and "-X" in argv and argv[-3:] == ["--", "echo", "hi"]
    assert "ProxyCommand=py -m kubevisor.cli.main _ssh-proxy v" in argv
    assert "HostKeyAlias=v.default.01234567.kubevisor" in argv
    assert SECRET not in " ".join(argv)
    url = remote.tunnel_url("https://gw:8443", "default", "v", "abc")
    assert url == "wss://gw:8443/ssh?namespace=default&vm=v&ticket=abc"
    assert remote.gateway_url(None, {remote.ENV_GATEWAY: "http://g/"}) == "http://g"
    with pytest.raises(remote.SSHError, match="--gateway"):
        remote.gateway_url(None, {})


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        ({"phase": "Running", "machine": {}}, "has no access.sshKeySecret"),
        ({"phase": "Stopped", "machine": {"access": {"sshKeySecret": "k"}}}, "is Stopped"),
        ({"machine": {"access": {"sshKeySecret": "k"}}}, "not started yet"),
    ],
)
def test_cli_preflight(status: dict[str, Any], needle: str) -> None:
    with pytest.raises(remote.SSHError, match=needle):
        remote.preflight({"metadata": {"name": "v", "namespace": "default"}, "status": status})
    remote.preflight({"metadata": {"name": "v", "namespace": "default"},
                      "status": {"phase": "Running",
                                 "machine": {"access": {"sshKeySecret": "k"}}}})  # fmt: skip
