"""ssh and X11 forwarding into a real guest: the Debian app guest (hack/build-appguest.sh)
as a VirtualMachine on a one-node dev cluster under QEMU (TCG), the real
``kubevisor-gateway``, the system OpenSSH client run by ``kubevisor ssh``, and an Xvfb on
this host as the user's X server.

- the guest authorizes the key from the VM's Secret (injected on the kernel command line
  by the controller): ``kubevisor ssh vm -- echo hi`` prints hi;
- ``kubevisor ssh -X vm -- xeyes`` draws on the Xvfb: the window is listed by
  ``xwininfo -root -tree``, and a screenshot (ImageMagick ``import``) has the eyes' white
  pixels inside the window's rectangle on the black root;
- a key not in the Secret is refused by the guest's sshd (non-zero, "Permission
  denied"); a VM without access.sshKeySecret is refused by the CLI with the fix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups
from kubevisor.devenv import appguest, testing
from kubevisor.devenv import cluster as devcluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
CLUSTER = "kvsshx"
NS = "default"
VM = "sshvm"
SECRET = "sshvm-keys"
BOOT_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Env:
    dev: devcluster.DevCluster
    gateway: str
    keys: Path
    home: Path


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "-n", NS, "get", kind, name,
         "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (yaml.safe_load(proc.stdout) or {}) if proc.returncode == 0 else {}


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    testing.require_root("a dev cluster (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "qemu-system-x86_64", "ssh", "ssh-keygen", "Xvfb",
                          "xwininfo", "import", "xauth")  # fmt: skip
    testing.require_module("PIL")
    appguest.require_app_guest()
    if not (VENV_BIN / "kubevisor-gateway").exists():
        testing.absent("kubevisor-gateway not installed in .venv (hack/setup)")
    keys = tmp_path_factory.mktemp("keys")
    home = tmp_path_factory.mktemp("home")
    _keygen(keys / "good")
    _keygen(keys / "wrong")
    port = _free_port()
    try:
        dev = devcluster.up(CLUSTER, nodes_count=1, stop_timeout=5.0)
    except BaseException:
        devcluster.down(CLUSTER)
        raise
    try:
        argv = [
            str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={dev.kubeconfig}",
            "--host=127.0.0.1", f"--port={port}", f"--display-netns=kv-{CLUSTER}-{{node}}",
        ]  # fmt: skip
        log = dev.cluster_dir / "logs" / "gateway.log"
        with testing.running_process(argv, log=log, what="gateway"):

            def up() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            testing.wait_for(up, timeout=30, what="the gateway listening")
            yield Env(dev=dev, gateway=f"http://127.0.0.1:{port}", keys=keys, home=home)
    finally:
        dev.run_kubectl("-n", NS, "delete", "virtualmachines", "--all", "--wait=true",
                        "--timeout=180s")  # fmt: skip
        dev.run_kubectl("-n", NS, "delete", "secret", SECRET, "--ignore-not-found")
        testing.wait_for(lambda: not _get(dev, "virtualmachine", VM), timeout=60,
                         what=f"VM {VM} gone")  # fmt: skip
        devcluster.down(CLUSTER)


def _apply_vm(
    dev: devcluster.DevCluster, name: str, key_secret: str | None, run: str = "Always"
) -> None:
    body = {
        "apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"runStrategy": run,
                 **appguest.machine_spec(key_secret=key_secret, storage="local")},
    }  # fmt: skip
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


@pytest.fixture(scope="module")
def vm(env: Env) -> str:
    """The VM, its key Secret (the good key only), booted to sshd."""
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
        "stringData": {"authorized_keys": (env.keys / "good.pub").read_text()},
    }  # fmt: skip
    env.dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(secret))
    _apply_vm(env.dev, VM, SECRET)

    def ready() -> Path | None:
        st = _get(env.dev, "virtualmachine", VM).get("status") or {}
        log = Path(st["consoleLog"]) if st.get("consoleLog") else None
        if st.get("phase") != "Running" or log is None or not log.exists():
            return None
        return log if appguest.READY_MARKER in log.read_text(errors="replace") else None

    console = testing.wait_for(
        ready, timeout=BOOT_S, what=f"VM {VM} Running with sshd up", every=1.0,
        show=lambda: _get(env.dev, "virtualmachine", VM).get("status"),
    )  # fmt: skip
    assert "authorized 1 keys" in console.read_text(errors="replace")
    return VM


def _kubevisor_ssh(env: Env, *args: str, key: str = "good", display: str | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    run_env = {**os.environ, "HOME": str(env.home)}
    run_env.pop("DISPLAY", None)
    if display is not None:
        run_env["DISPLAY"] = display
    argv = [str(VENV_BIN / "kubevisor"), f"--kubeconfig={env.dev.kubeconfig}", "ssh",
            "--gateway", env.gateway, "-i", str(env.keys / key), "-n", NS, *args]  # fmt: skip
    return subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def test_ssh_runs_a_command(env: Env, vm: str) -> None:
    proc = _kubevisor_ssh(env, vm, "--", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hi"


def test_wrong_key_is_refused(env: Env, vm: str) -> None:
    proc = _kubevisor_ssh(env, vm, "--", "echo", "hi", key="wrong")
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr, proc.stderr
    assert "hi" not in proc.stdout


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[str]:
    """An Xvfb on this host (640x480, black root), stopped after the test."""
    number = 100 + uuid.uuid4().int % 400
    display = f":{number}"
    argv = ["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"]
    with testing.running_process(argv, log=tmp_path / "xvfb.log", what="Xvfb"):
        testing.wait_for(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), timeout=30,
                         what="Xvfb listening")  # fmt: skip
        yield display


def _xeyes_window(display: str) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the xeyes window, from ``xwininfo -root -tree``."""
    out = subprocess.run(["xwininfo", "-root", "-tree"], env={**os.environ, "DISPLAY": display},
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    for line in out.splitlines():
        if '"xeyes"' in line:
            # 0x20000a "xeyes": ("xeyes" "XEyes")  150x100+0+0  +0+0
            geometry = line.split(")")[-1].split()
            size, _, _ = geometry[0].partition("+")
            w, h = (int(v) for v in size.split("x"))
            x, y = (int(v) for v in geometry[1].lstrip("+").split("+"))
            return x, y, w, h
    return None


def test_x11_forwarding_draws_xeyes_on_the_users_display(
    env: Env, vm: str, xvfb: str, tmp_path: Path
) -> None:
    from PIL import Image

    run_env = {**os.environ, "HOME": str(env.home), "DISPLAY": xvfb}
    argv = [str(VENV_BIN / "kubevisor"), f"--kubeconfig={env.dev.kubeconfig}", "ssh", "-X",
            "--gateway", env.gateway, "-i", str(env.keys / "good"), "-n", NS, vm, "--",
            "xeyes"]  # fmt: skip
    log = tmp_path / "ssh-x.log"
    with testing.running_process(argv, log=log, what="kubevisor ssh -X", env=run_env):
        x, y, w, h = testing.wait_for(
            lambda: _xeyes_window(xvfb), timeout=90, what="xeyes listed on the Xvfb",
            show=lambda: log.read_text(errors="replace")[-800:],
        )  # fmt: skip

        def eyes_drawn() -> int | None:
            shot = tmp_path / "shot.png"
            subprocess.run(["import", "-window", "root", str(shot)], check=True,
                           env={**os.environ, "DISPLAY": xvfb})  # fmt: skip
            image = Image.open(shot).convert("RGB")
            inside = image.crop((x, y, x + w, y + h))
            white = sum(1 for p in inside.getdata() if min(p) > 200)
            outside = image.crop((x + w, y + h, image.width, image.height))
            assert all(p == (0, 0, 0) for p in outside.getdata()), "drawing outside xeyes"
            return white if white > w * h // 10 else None

        white = testing.wait_for(eyes_drawn, timeout=60, what="the eyes drawn", every=1.0)
        assert white > 0
    testing.wait_for(lambda: _xeyes_window(xvfb) is None, timeout=30,
                     what="xeyes gone once ssh ended")  # fmt: skip


def _condition(dev: devcluster.DevCluster, name: str, type_: str) -> dict[str, Any]:
    st = _get(dev, "virtualmachine", name).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c.get("type") == type_), {})


def test_cli_refuses_with_the_fix(env: Env) -> None:
    """No key Secret named, or not Running: the CLI says what to do, ssh never runs."""
    _apply_vm(env.dev, "nokeys", None, run="Halted")
    _apply_vm(env.dev, "halted", SECRET, run="Halted")
    for name in ("nokeys", "halted"):
        testing.wait_for(lambda n=name: (_get(env.dev, "virtualmachine", n).get("status")
                                         or {}).get("machine"),
                         timeout=60, what=f"VM {name} resolved")  # fmt: skip
    proc = _kubevisor_ssh(env, "nokeys", "--", "true")
    assert proc.returncode == 1
    assert "has no access.sshKeySecret" in proc.stderr
    assert "kubectl create secret generic nokeys-ssh" in proc.stderr
    proc = _kubevisor_ssh(env, "halted", "--", "true")
    assert proc.returncode == 1
    assert "not Running; start it (kubevisor start halted" in proc.stderr
    env.dev.run_kubectl("-n", NS, "delete", "virtualmachine", "nokeys", "halted",
                        "--wait=true", "--timeout=120s")  # fmt: skip


def test_missing_key_secret_is_a_condition_and_an_event(env: Env) -> None:
    """The VM waits (SSHKeysReady False, SecretNotFound, a Warning Event) and is not
    placed; once the Secret exists its keys resolve."""
    _apply_vm(env.dev, "waits", "waits-keys", run="Halted")
    cond = testing.wait_for(
        lambda: _condition(env.dev, "waits", "SSHKeysReady") or None, timeout=60,
        what="SSHKeysReady on VM waits",
    )  # fmt: skip
    assert (cond["status"], cond["reason"]) == ("False", "SecretNotFound")
    assert "Secret waits-keys" in cond["message"]
    events = env.dev.run_kubectl("-n", NS, "get", "events", "--field-selector",
                                 "involvedObject.name=waits", "-o", "yaml")  # fmt: skip
    reasons = [e.get("reason") for e in (yaml.safe_load(events) or {}).get("items") or []]
    assert "SecretNotFound" in reasons
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "waits-keys", "namespace": NS},
        "stringData": {"k": (env.keys / "good.pub").read_text()},
    }  # fmt: skip
    env.dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(secret))
    cond = testing.wait_for(
        lambda: (c := _condition(env.dev, "waits", "SSHKeysReady")).get("status") == "True"
        and c, timeout=60, what="SSHKeysReady True once the Secret exists",
    )  # fmt: skip
    machine = (_get(env.dev, "virtualmachine", "waits").get("status") or {})["machine"]
    assert "kv.sshkeys=" in machine["boot"]["cmdline"]
    env.dev.run_kubectl("-n", NS, "delete", "virtualmachine", "waits", "--wait=true",
                        "--timeout=120s")  # fmt: skip
    env.dev.run_kubectl("-n", NS, "delete", "secret", "waits-keys")
