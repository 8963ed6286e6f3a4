"""A real NFS server on a dev cluster's fabric: nfs-ganesha (user space, VFS FSAL, from
Debian) with its own rpcbind, in a network namespace ``kv-<cluster>-nas`` whose veth is
enslaved to the fabric bridge at :data:`ADDRESS`.

Why user space: the kernel NFS server cannot run in a test network namespace here, and
ganesha needs nothing but a directory. rpcbind runs beside it in a private mount
namespace (its own ``/run``), so it never meets the host's. QEMU's NFS client (libnfs)
speaks NFSv3, which mounts through rpcbind; the export's path is its real directory.

:func:`cut` / :func:`restore` take the server's link down and up: the server stays,
only the network to it goes — an unreachable NAS without losing its files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from kubevisor.devenv import nodeplans

#: The NAS address on the fabric (.100-.254 are for static guests; .250 is the NAS).
ADDRESS: Final = str(nodeplans.FABRIC_NETWORK.network_address + 250)
NFS_PORT: Final = 2049

_CONF = """NFS_CORE_PARAM {{ Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false;
  NFS_Port = 2049; MNT_Port = 20048; }}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = "{state}/recovery"; }}
EXPORT {{ Export_Id = 1; Path = "{export}"; Pseudo = "/export"; Access_Type = RW;
  Squash = No_Root_Squash; Protocols = 3, 4; Transports = TCP; SecType = sys;
  FSAL {{ Name = VFS; }} }}
LOG {{ Default_Log_Level = EVENT; }}
"""

_START = """#!/bin/sh
mount -t tmpfs tmpfs /run
rpcbind -f &
i=0; while ! [ -S /run/rpcbind.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
exec ganesha.nfsd -F -f {state}/ganesha.conf -L {state}/ganesha.log -p /run/ganesha.pid
"""


@dataclasses.dataclass(frozen=True)
class NAS:
    """A running NFS server: its netns, address, exported directory, process group."""

    netns: str
    address: str
    export: Path
    state: Path
    pid: int

    @property
    def veth(self) -> str:
        return "kvnas0"


def netns_name(cluster: str) -> str:
    return f"kv-{cluster}-nas"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def start(cluster: str, state: Path, *, timeout: float = 30.0) -> NAS:
    """Start the server for ``cluster`` (its fabric must exist), exporting
    ``<state>/export``; returns once it listens on the NFS port."""
    if shutil.which("ganesha.nfsd") is None or shutil.which("rpcbind") is None:
        raise FileNotFoundError("ganesha.nfsd or rpcbind missing (hack/setup installs them)")
    stop_leftovers(cluster, state)
    export = state / "export"
    export.mkdir(parents=True, exist_ok=True)
    (state / "recovery").mkdir(exist_ok=True)
    (state / "ganesha.conf").write_text(_CONF.format(state=state, export=export))
    script = state / "start.sh"
    script.write_text(_START.format(state=state))
    script.chmod(0o755)
    ns, fabric = netns_name(cluster), nodeplans.fabric_netns_name(cluster)
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", fabric, "link", "add", "kvnas-f", "type", "veth", "peer", "kvnas0", "netns", ns)
    _ip("-n", fabric, "link", "set", "kvnas-f", "master", nodeplans.FABRIC_BRIDGE, "up")
    prefix = nodeplans.FABRIC_NETWORK.prefixlen
    _ip("-n", ns, "addr", "add", f"{ADDRESS}/{prefix}", "dev", "kvnas0")
    _ip("-n", ns, "link", "set", "kvnas0", "up")
    with open(state / "start.out", "ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", str(script)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    (state / "pid").write_text(f"{proc.pid}\n")
    nas = NAS(netns=ns, address=ADDRESS, export=export, state=state, pid=proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ganesha.nfsd exited: see {state / 'ganesha.log'}")
        listening = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{NFS_PORT}"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if listening.strip():
            return nas
        time.sleep(0.2)
    stop(nas)
    raise TimeoutError(f"ganesha.nfsd did not listen on {NFS_PORT} within {timeout} s")


def cut(nas: NAS) -> None:
    """Make the server unreachable from the fabric (its link down); files stay."""
    _ip("-n", nas.netns, "link", "set", nas.veth, "down")


def restore(nas: NAS) -> None:
    """Bring the server's link back up."""
    _ip("-n", nas.netns, "link", "set", nas.veth, "up")


def stop(nas: NAS) -> None:
    """Stop the server and remove its namespace (the exported files stay)."""
    try:
        os.killpg(nas.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(nas.pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(nas.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", nas.netns], capture_output=True, check=False)
    (nas.state / "pid").unlink(missing_ok=True)


def stop_leftovers(cluster: str, state: Path) -> None:
    """Stop the server an earlier run left (its pid file in ``state``) and remove its
    namespace (its veth goes with it)."""
    pidfile = state / "pid"
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pidfile.unlink()
    subprocess.run(["ip", "netns", "del", netns_name(cluster)], capture_output=True, check=False)
