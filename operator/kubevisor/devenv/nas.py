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
import shutil
from pathlib import Path
from typing import Final

from kubevisor.devenv import fabricservers, nodeplans

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
    ns = netns_name(cluster)
    fabricservers.attach(cluster, ns, ADDRESS, inner="kvnas0", outer="kvnas-f")
    proc = fabricservers.spawn(ns, script, state / "start.out")
    (state / "pid").write_text(f"{proc.pid}\n")
    nas = NAS(netns=ns, address=ADDRESS, export=export, state=state, pid=proc.pid)
    try:
        fabricservers.wait_listening(
            ns, NFS_PORT, proc, timeout=timeout, what=f"ganesha.nfsd (see {state / 'ganesha.log'})"
        )
    except BaseException:
        stop(nas)
        raise
    return nas


def cut(nas: NAS) -> None:
    """Make the server unreachable from the fabric (its link down); files stay."""
    fabricservers.ip("-n", nas.netns, "link", "set", nas.veth, "down")


def restore(nas: NAS) -> None:
    """Bring the server's link back up."""
    fabricservers.ip("-n", nas.netns, "link", "set", nas.veth, "up")


def stop(nas: NAS) -> None:
    """Stop the server and remove its namespace (the exported files stay)."""
    fabricservers.stop(nas.pid, nas.netns, nas.state / "pid")


def stop_leftovers(cluster: str, state: Path) -> None:
    """Stop the server an earlier run left (its pid file in ``state``) and remove its
    namespace (its veth goes with it)."""
    fabricservers.stop_leftovers(netns_name(cluster), state / "pid")
