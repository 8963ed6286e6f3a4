"""A real iSCSI target on a dev cluster's fabric: tgt (user space, from Debian) in a
network namespace ``kv-<cluster>-san`` at :data:`ADDRESS`, serving LUNs backed by files,
optionally behind CHAP (an incoming account bound to the target).

tgtd runs in a private mount namespace (its own ``/run``, where its control socket
lives), so it never meets a host's tgt; it is configured with ``tgtadm`` entered into
that same namespace (``nsenter -t <pid> -m -n``).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Final

from kubevisor.devenv import fabricservers, nodeplans

#: The SAN address on the fabric (.250 is the NAS).
ADDRESS: Final = str(nodeplans.FABRIC_NETWORK.network_address + 249)
ISCSI_PORT: Final = 3260
IQN: Final = "iqn.2026-12.io.kubevisor:dev.san"

_START = """#!/bin/sh
mount -t tmpfs tmpfs /run
exec tgtd -f
"""


@dataclasses.dataclass(frozen=True)
class SAN:
    """A running target: its netns, address, state directory, process group."""

    netns: str
    address: str
    state: Path
    pid: int
    iqn: str = IQN


def netns_name(cluster: str) -> str:
    return f"kv-{cluster}-san"


def start(
    cluster: str,
    state: Path,
    *,
    lun_bytes: int = 64 * 2**20,
    chap: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> SAN:
    """Start tgtd for ``cluster`` (its fabric must exist) with target :data:`IQN` and LUN 1
    backed by ``<state>/lun1.img`` (``lun_bytes``, zeroed, sparse); ``chap``: (user,
    password) an initiator must log in with. Returns once it listens."""
    if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
        raise FileNotFoundError("tgtd or tgtadm missing (hack/setup installs tgt)")
    state.mkdir(parents=True, exist_ok=True)
    ns = netns_name(cluster)
    fabricservers.stop_leftovers(ns, state / "pid")
    backing = state / "lun1.img"
    with open(backing, "wb") as f:
        f.truncate(lun_bytes)
    script = state / "start.sh"
    script.write_text(_START)
    script.chmod(0o755)
    fabricservers.attach(cluster, ns, ADDRESS, inner="kvsan0", outer="kvsan-f")
    proc = fabricservers.spawn(ns, script, state / "tgtd.out")
    (state / "pid").write_text(f"{proc.pid}\n")
    san = SAN(netns=ns, address=ADDRESS, state=state, pid=proc.pid)
    try:
        fabricservers.wait_listening(ns, ISCSI_PORT, proc, timeout=timeout, what="tgtd")
        _tgtadm(san, "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        _tgtadm(san, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                "-b", str(backing))  # fmt: skip
        _tgtadm(san, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if chap is not None:
            user, password = chap
            _tgtadm(san, "--op", "new", "--mode", "account", "--user", user,
                    "--password", password)  # fmt: skip
            _tgtadm(san, "--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
    except BaseException:
        stop(san)
        raise
    return san


def _tgtadm(san: SAN, *args: str) -> str:
    proc = subprocess.run(
        ["nsenter", "-t", str(san.pid), "-m", "-n", "tgtadm", "--lld", "iscsi", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"tgtadm {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def stop(san: SAN) -> None:
    """Stop the target and remove its namespace (the backing files stay)."""
    fabricservers.stop(san.pid, san.netns, san.state / "pid")
