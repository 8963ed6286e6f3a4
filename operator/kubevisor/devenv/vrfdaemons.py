"""Scaffolding of the routing daemon tests: one VRF "red" on a simulated netns node, its
daemon run by a real `supervising.Supervisor` as the VRF loop runs it.

Shared by ``tests/integration/test_vrf_daemons.py`` (BIRD) and ``test_vrf_frr.py`` (FRR)
through the ``daemon_vrf`` fixture (``tests/integration/conftest.py``), so both daemons are
tested on the same topology: a node namespace with a segment bridge ``br-red``, the VRF
realized by `VRFRealizer` on the netns backend (its own namespace, cgroup with a memory
limit), the daemon's run directory under the default run root (the daemon's account must
reach its files). The tests observe with ``/proc`` and ``ip`` on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from kubevisor.agent.kernel import vrfrealizing
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.api import vrfs
from kubevisor.devenv import testing

#: The VRF's name, table and interface in every daemon test.
NAME = "red"
TABLE = 1001
ADDRESS = "10.0.0.1/24"


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """``ip [-n ns] args`` (its output)."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def require(daemon: daemons.Daemon) -> None:
    """`testing.absent` unless root and ``daemon``'s programs are here."""
    testing.require_root("to build network namespaces")
    testing.require_tools("ip")
    if daemon not in supervising.installed():
        package = "bird2" if daemon == "bird" else "frr and frr-pythontools"
        testing.absent(f"{daemon} is not installed (hack/setup installs {package})")


@contextlib.contextmanager
def node_netns(prefix: str) -> Iterator[str]:
    """A simulated node: namespace ``<prefix>-n`` with bridge ``br-red``, deleted after."""
    ns = f"{prefix}-n"
    ip("netns", "add", ns)
    try:
        ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "br-red", "type", "bridge", ns=ns)
        ip("link", "set", "br-red", "up", ns=ns)
        yield ns
    finally:
        ip("netns", "del", ns, check=False)


def desired(name: str = NAME) -> planning.DesiredVRF:
    """VRF ``name`` with interface red0 on segment red and a 256Mi memory limit."""
    spec = vrfs.VRFSpec.model_validate(
        {
            "interfaces": [{"name": "red0", "network": "red", "addresses": [ADDRESS]}],
            "resources": {"memory": "256Mi"},
            "backend": "netns",
        }
    )
    return planning.plan(
        name, spec, table=TABLE, bridge_for=lambda n, v: f"br-{n}", kernel_has_vrf=False
    )


@dataclass
class DaemonVRF:
    """The realized VRF and the supervisor of its daemon (a test may replace it, as a
    restarted agent does); ``woken`` is set when the supervisor asks for a pass."""

    realizer: vrfrealizing.VRFRealizer
    supervisor: supervising.Supervisor
    woken: asyncio.Event
    vrf_ns: str

    def new_supervisor(self) -> supervising.Supervisor:
        """A supervisor as a freshly started agent has: it knows nothing yet."""
        return supervising.Supervisor(self.realizer, on_change=self.woken.set)

    async def running(
        self, daemon: daemons.Daemon, config: str, *, within: float = 20.0
    ) -> supervising.Report:
        """Passes (as the VRF loop runs them: on a wake-up, else every 0.5 s) until the
        daemon reports Running; the last report."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self.woken.clear()
            report = await self.supervisor.ensure(NAME, daemons.Wanted(daemon, config))
            if report.status is not None and report.status["state"] == "Running":
                return report
            if loop.time() > deadline:
                raise AssertionError(f"daemon not running after {within} s: {report}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), timeout=0.5)


@contextlib.asynccontextmanager
async def daemon_vrf(node_ns: str) -> AsyncIterator[DaemonVRF]:
    """VRF "red" realized on ``node_ns``; its daemon stopped and the VRF removed after."""
    realizer = vrfrealizing.VRFRealizer(node_netns=node_ns)
    woken = asyncio.Event()
    ctx = DaemonVRF(realizer, supervising.Supervisor(realizer, on_change=woken.set), woken, "")
    try:
        status = await realizer.apply(desired())
        assert status["ready"], status
        ctx.vrf_ns = realizer.naming.vrf_netns(NAME)
        yield ctx
    finally:
        await ctx.supervisor.stop(NAME)
        ctx.supervisor.close()
        await realizer.remove(NAME)
        realizer.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def uids(pid: int) -> list[str]:
    """Real and effective uid of a process."""
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]


def processes_with(text: str) -> list[Path]:
    """The ``/proc/PID/cmdline`` files of processes whose command line holds ``text``."""

    def has(cmdline: Path) -> bool:
        try:
            return text.encode() in cmdline.read_bytes()
        except OSError:
            return False

    return [p for p in Path("/proc").glob("[0-9]*/cmdline") if has(p)]
