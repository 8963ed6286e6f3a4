"""ssh keys of a VM (``api/vmaccess``) and the controller's injection of them
(``controller/vms/sshkeys.inject``): which Secret lines are keys, and what the command
line carries."""

from __future__ import annotations

import base64

import pytest

from kubevisor.api import appservers, machines, vmaccess
from kubevisor.api.conditions import Reason
from kubevisor.controller.desktoppools import appkeys
from kubevisor.controller.vms import sshkeys

pytestmark = pytest.mark.unit

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcd alice@laptop"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7== bob"
ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY="


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ({"authorized_keys": b64(ED)}, [ED]),
        ({"a": b64(f"{ED}\n\n# comment\n{RSA}\n"), "b": b64(ECDSA)}, [ED, RSA, ECDSA]),
        ({"b": b64(RSA), "a": b64(ED)}, [ED, RSA]),  # in key order
        ({"a": b64(ED), "b": b64(ED + "\n")}, [ED]),  # each once
        ({"a": b64(f"  {ED}  ")}, [ED]),
        # a private key, a bare type, binary and undecodable values are not keys
        ({"k": b64("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n"), "a": b64(ED)}, [ED]),
        ({"a": b64("ssh-ed25519"), "b": b64(ED)}, [ED]),
        ({"a": base64.b64encode(b"\xff\xfe").decode(), "b": "%%%", "c": b64(ED)}, [ED]),
        ({"a": b64("ssh-dss AAAAB3NzaC1kc3M="), "b": b64(ED)}, [ED]),
    ],
)
def test_authorized_keys(data: dict[str, str], keys: list[str]) -> None:
    assert vmaccess.authorized_keys(data) == keys


@pytest.mark.parametrize(
    "data",
    [{}, {"a": b64("# nothing\n")}, {"a": b64("ssh-ed25519 not+base64!")}, {"a": b64(ED + "\x01")}],
)
def test_no_key_is_refused(data: dict[str, str]) -> None:
    with pytest.raises(vmaccess.KeysRefused, match="no OpenSSH public key"):
        vmaccess.authorized_keys(data)


def test_more_than_the_command_line_carries_is_refused() -> None:
    many = "\n".join(f"ssh-ed25519 AAAA{i:04d}{'x' * 60} k{i}" for i in range(20))
    with pytest.raises(vmaccess.KeysRefused, match="more than the 1000"):
        vmaccess.authorized_keys({"a": b64(many)})


@pytest.mark.parametrize(
    ("cmdline", "kept"),
    [
        (None, ""),
        ("console=ttyS0 root=/dev/vda", "console=ttyS0 root=/dev/vda"),
        ("console=ttyS0 kv.sshkeys=OLD kv.ip=1.2.3.4/24", "console=ttyS0 kv.ip=1.2.3.4/24"),
    ],
)
def test_with_keys_replaces_any_earlier(cmdline: str | None, kept: str) -> None:
    out = vmaccess.with_keys(cmdline, [ED, RSA])
    head, _, param = out.rpartition(" ")
    assert head == kept
    name, _, value = param.partition("=")
    assert name == vmaccess.CMDLINE_PARAM
    assert base64.b64decode(value).decode() == f"{ED}\n{RSA}"


def _machine(**boot: str) -> machines.MachineSpec:
    return machines.MachineSpec.model_validate(
        {"cpu": {"cores": 1}, "memory": "128Mi", "boot": boot, "access": {"sshKeySecret": "k"}}
    )


def test_inject_puts_keys_on_the_command_line() -> None:
    machine, cond = sshkeys.inject(_machine(kernel="/k", cmdline="console=ttyS0"), "k",
                                   {"a": b64(ED)})  # fmt: skip
    assert machine is not None and cond.status == "True"
    assert machine.boot.cmdline == "console=ttyS0 kv.sshkeys=" + b64(ED)


@pytest.mark.parametrize(
    ("boot", "data", "reason"),
    [
        ({"kernel": "/k"}, None, Reason.SECRET_NOT_FOUND),
        ({"kernel": "/k"}, {"a": b64("nope")}, Reason.INVALID_SSH_KEYS),
        ({}, {"a": b64(ED)}, Reason.KERNEL_BOOT_REQUIRED),
    ],
)
def test_inject_refuses_with_a_reason(
    boot: dict[str, str], data: dict[str, str] | None, reason: Reason
) -> None:
    machine, cond = sshkeys.inject(_machine(**boot), "k", data)
    assert machine is None
    assert (cond.status, cond.reason) == ("False", reason)
    assert "Secret k" in cond.message or "sshKeySecret k" in cond.message


# --- the guest's host key -------------------------------------------------------------


def _host_key(uid: str = "pool-uid") -> tuple[bytes, str, bytes]:
    app_private, _ = appkeys.generate()
    private, public = appservers.host_key(app_private, uid)
    return private, public, app_private


def test_the_host_key_is_derived_per_pool_and_the_same_every_time() -> None:
    _, public, app = _host_key()
    assert public.startswith("ssh-ed25519 ")
    assert appservers.host_key(app, "pool-uid")[1] == public
    assert appservers.host_key(app, "other-uid")[1] != public
    other_app, _ = appkeys.generate()
    assert appservers.host_key(other_app, "pool-uid")[1] != public
    assert appservers.known_hosts(public) == f"{appservers.HOST_KEY_ALIAS} {public}\n"


def test_inject_adds_the_host_key_body() -> None:
    private, _, _ = _host_key()
    data = {"a": b64(ED), vmaccess.HOST_KEY_FIELD: base64.b64encode(private).decode()}
    machine, cond = sshkeys.inject(_machine(kernel="/k", cmdline="console=ttyS0"), "k", data)
    assert machine is not None and cond.status == "True" and "host key" in cond.message
    params = dict(p.split("=", 1) for p in (machine.boot.cmdline or "").split()[1:])
    body = params[vmaccess.HOST_KEY_PARAM]
    assert "-----" not in body and body in "".join(private.decode().splitlines()[1:-1])
    assert len(machine.boot.cmdline or "") < 1024, "room left on the kernel command line"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b64("not a key"), "not an OpenSSH private key"),
        ("%%%", "not base64"),
        (b64("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "A" * 700 + "\n"
             "-----END OPENSSH PRIVATE KEY-----\n"), "more than the 600"),
    ],
)  # fmt: skip
def test_a_bad_host_key_is_refused(value: str, why: str) -> None:
    machine, cond = sshkeys.inject(
        _machine(kernel="/k"), "k", {"a": b64(ED), vmaccess.HOST_KEY_FIELD: value}
    )
    assert machine is None and cond.reason is Reason.INVALID_SSH_KEYS and why in cond.message
