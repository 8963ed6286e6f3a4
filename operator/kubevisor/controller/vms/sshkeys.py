"""The VM's ssh keys onto its kernel command line (api/vmaccess, docs/remote-access.md).

Runs after resolution: a machine with ``access.sshKeySecret`` gets the Secret's public
key lines as ``kv.sshkeys=`` on ``boot.cmdline`` (and its host key, when it carries
one, as ``kv.hostkey=``), so the guest's init authorizes them at boot and no key is ever
in an image. A Secret that is missing or holds no key leaves
the VM unresolved (it waits, SSHKeysReady False with the reason, a Warning Event from
the status write) rather than booting a guest nobody can log in to.
"""

from __future__ import annotations

from typing import Protocol

from kubevisor.api import machines, vmaccess
from kubevisor.api.conditions import Reason
from kubevisor.controller.vms.status import Cond


class Secrets(Protocol):
    """The one read this phase needs (``controller.kube.client.Kube`` has it)."""

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...


def inject(
    machine: machines.MachineSpec, secret: str, data: dict[str, str] | None
) -> tuple[machines.MachineSpec | None, Cond]:
    """The machine with the keys on its command line, or None and why not (pure)."""
    if machine.boot.kernel is None:
        return None, Cond(
            "False",
            Reason.KERNEL_BOOT_REQUIRED,
            f"access.sshKeySecret {secret} needs boot.kernel: the keys reach the guest on"
            " the kernel command line.",
        )
    if data is None:
        return None, Cond(
            "False",
            Reason.SECRET_NOT_FOUND,
            f"Secret {secret} (access.sshKeySecret) does not exist in the VM's namespace;"
            " the VM starts as soon as it does.",
        )
    try:
        keys = vmaccess.authorized_keys(data)
        host_key = vmaccess.host_key_body(data)
    except vmaccess.KeysRefused as exc:
        return None, Cond("False", Reason.INVALID_SSH_KEYS, f"Secret {secret}: {exc}.")
    cmdline = vmaccess.with_keys(machine.boot.cmdline, keys)
    if host_key is not None:
        cmdline = vmaccess.with_host_key(cmdline, host_key)
    boot = machine.boot.model_copy(update={"cmdline": cmdline})
    also = " and the guest's host key" if host_key is not None else ""
    return machine.model_copy(update={"boot": boot}), Cond(
        "True", Reason.AS_EXPECTED, f"{len(keys)} ssh keys{also} from Secret {secret}"
    )


async def apply(
    wanted: machines.MachineSpec | None, namespace: str, api: Secrets
) -> tuple[machines.MachineSpec | None, Cond | None]:
    """``wanted`` with its keys (reading the Secret), and the SSHKeysReady condition;
    unchanged and no condition when the machine asks for no keys."""
    if wanted is None or wanted.access is None or wanted.access.ssh_key_secret is None:
        return wanted, None
    secret = wanted.access.ssh_key_secret
    return inject(wanted, secret, await api.secret_data(namespace, secret))
