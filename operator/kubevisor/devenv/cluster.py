"""A whole dev cluster on one host: control plane, simulated nodes, controller, agents.

``up`` creates the simulated nodes first (their teardown removes the whole cluster
directory, so nothing else may live there before), then starts etcd + kube-apiserver
with the CRDs, then ``kubevisor-controller`` on the host and one ``kubevisor-agent`` per
node inside the node's mount namespace (so ``qemu:///system`` is the node's libvirtd;
netlink goes to the node's network namespace via ``--netns``). Processes are detached,
log to ``<cluster>/logs/<name>.log`` and are recorded in ``<cluster>/procs.json``.

``down`` stops the controller and agents, the control plane, and destroys the nodes
(which kills anything left in their namespaces: QEMU guests included), leaving nothing
running.

    python -m kubevisor.devenv.cluster up --cluster dev --nodes 2
    python -m kubevisor.devenv.cluster down --cluster dev
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kubevisor.devenv import controlplane, nodes

VENV_BIN = Path(sys.executable).parent
#: Where templates find kernels and base images (docs/examples/vmtemplate.yaml).
IMAGE_DIR = Path("/var/lib/kubevisor/images")
GUEST_CACHE = Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor")) / "images"


@dataclasses.dataclass(frozen=True)
class DevCluster:
    """A running dev cluster: where its kubeconfig, logs and nodes are."""

    name: str
    base_dir: Path
    kubeconfig: Path
    kubectl: Path
    nodes: tuple[nodes.SimNode, ...]
    pids: dict[str, int]

    @property
    def cluster_dir(self) -> Path:
        return self.base_dir / self.name

    def log(self, process: str) -> Path:
        return self.cluster_dir / "logs" / f"{process}.log"

    def run_kubectl(self, *args: str, stdin: str | None = None) -> str:
        """``kubectl ARGS`` against this cluster, as a user types it; its output.
        Raises RuntimeError with kubectl's stderr when it fails (tests fail on it)."""
        proc = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout


def controlplane_dir(name: str, base_dir: Path) -> Path:
    return base_dir / name / "controlplane"


def agent_argv(
    node: nodes.SimNode,
    *,
    kubeconfig: Path,
    stop_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
    management: bool = False,
) -> list[str]:
    """The agent command line for a simulated node (pure). ``extra_args`` are appended,
    e.g. ``--network=red`` (a managed, node-local network) or ``--vrf-resync-seconds=5``.
    ``management``: the node's ``mgmt0`` is its management interface (migrations to it
    travel there, and its libvirtd is reached there)."""
    uplink = (
        [f"--management-interface={nodes.NODE_MANAGEMENT}",
         f"--migration-uri={node.management_uri}"]
        if management
        else [f"--migration-uri={node.tcp_uri}"]
    )  # fmt: skip
    return [
        *nodes.node_mount_exec_prefix(node),
        str(VENV_BIN / "kubevisor-agent"),
        f"--node={node.name}",
        f"--kubeconfig={kubeconfig}",
        "--libvirt-uri=qemu:///system",
        f"--netns={node.netns}",
        f"--state-dir={node.state_dir / 'kubevisor'}",
        f"--image-dir={IMAGE_DIR}",
        f"--shared-dir={node.shared_dir}",
        f"--address={node.fabric_ip}",
        *uplink,
        f"--label=kubevisor.io/hostname={node.name}",
        "--network=default=kvbr0",
        "--cpu=2",
        "--memory=4Gi",
        f"--stop-timeout={stop_timeout}",
        *extra_args,
    ]


def ensure_images() -> None:
    """Make the guests (hack/build-guest.sh's tiny, hack/build-appguest.sh's appguest)
    visible under IMAGE_DIR."""
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tiny", "appguest"):
        link = IMAGE_DIR / name
        if not link.exists() and (GUEST_CACHE / name).is_dir():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(GUEST_CACHE / name)


def _spawn(argv: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd="/",
        )  # fmt: skip
    return proc.pid


def up(
    name: str = "dev",
    *,
    nodes_count: int = 2,
    base_dir: Path = nodes.DEFAULT_BASE_DIR,
    controller: bool = True,
    stop_timeout: float = 10.0,
    agent_args: Sequence[str] = (),
    management: bool = False,
    power_switch: bool = True,
) -> DevCluster:
    """Create and start everything (any leftover of the same cluster is removed first).
    ``agent_args``: extra flags for every agent (see :func:`agent_argv`); ``management``:
    agents use the nodes' management network for migrations; ``power_switch``: with the
    controller, also run the local cluster's power switch (``devenv/nodepower``: stops
    the libvirtd of a node the controller marks for power-off, starts it when woken), as
    a real cluster's IPMI would act on the mark."""
    down(name, base_dir=base_dir)
    ensure_images()
    sim_nodes = nodes.create_cluster_nodes(name, nodes_count, base_dir=base_dir)
    try:
        cp = controlplane.ControlPlane(state_dir=controlplane_dir(name, base_dir))
        cp.start()
        cp.install_crds()
        register_nodes(cp.kubectl, cp.kubeconfig, [n.name for n in sim_nodes])
        logs = base_dir / name / "logs"
        pids: dict[str, int] = {}
        if controller:
            pids["controller"] = _spawn(
                [str(VENV_BIN / "kubevisor-controller"), f"--kubeconfig={cp.kubeconfig}"],
                logs / "controller.log",
            )
        for node in sim_nodes:
            argv = agent_argv(
                node,
                kubeconfig=cp.kubeconfig,
                stop_timeout=stop_timeout,
                extra_args=agent_args,
                management=management,
            )
            pids[f"agent-{node.name}"] = _spawn(argv, logs / f"agent-{node.name}.log")
        if controller and power_switch:
            pids["nodepower"] = _spawn(
                [sys.executable, "-m", "kubevisor.devenv.nodepower", "--cluster", name,
                 "--kubeconfig", str(cp.kubeconfig), "--kubectl", str(cp.kubectl),
                 "--base-dir", str(base_dir)],
                logs / "nodepower.log",
            )  # fmt: skip
        (base_dir / name / "procs.json").write_text(json.dumps(pids, indent=2) + "\n")
        return DevCluster(
            name=name,
            base_dir=base_dir,
            kubeconfig=cp.kubeconfig,
            kubectl=cp.kubectl,
            nodes=tuple(sim_nodes),
            pids=pids,
        )
    except BaseException:
        down(name, base_dir=base_dir)
        raise


def node_object(name: str) -> dict[str, object]:
    """The Node object of a simulated node (pure). No kubelet runs here, so nobody keeps
    its status: it exists so that the Kubernetes verbs users know act on our nodes
    (``kubectl get nodes``, ``kubectl cordon``/``uncordon``, which the drain and placement
    read); liveness stays the agent's Lease."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }


def register_nodes(kubectl: Path, kubeconfig: Path, names: Sequence[str]) -> None:
    """Create the Node object of each simulated node (as a kubelet registers its node)."""
    items = {"apiVersion": "v1", "kind": "List", "items": [node_object(n) for n in names]}
    subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
        input=json.dumps(items), text=True, check=True, capture_output=True,
    )  # fmt: skip


def _stop_pid(pid: int, *, timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL after ``timeout``; reap if it is our child."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists():
                    return
                stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    return
            time.sleep(0.05)


def down(name: str = "dev", *, base_dir: Path = nodes.DEFAULT_BASE_DIR) -> None:
    """Stop agents and controller, the control plane, then destroy the nodes."""
    procs = base_dir / name / "procs.json"
    if procs.exists():
        for _, pid in sorted(json.loads(procs.read_text()).items()):
            _stop_pid(int(pid))
        procs.unlink()
    cp_dir = controlplane_dir(name, base_dir)
    if (cp_dir / "state.json").exists():
        controlplane.ControlPlane.load(cp_dir).stop()
    nodes.destroy_cluster_nodes(name, base_dir=base_dir)
    remove_vrf_leftovers(name)


#: Where VRFRealizer puts a simulated node's VRFs: netns ``<node netns>-vrf-<vrf>`` and
#: cgroups ``<root>/<controller>/kubevisor-<node netns>/<vrf>``.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def remove_vrf_leftovers(name: str) -> list[str]:
    """Remove VRF namespaces and cgroups the cluster's agents left (agents keep realized
    VRFs when they stop, so the data plane survives an agent restart; after ``down``
    nothing may remain). Returns what was removed.

    Why here: the agents run in the nodes' mount namespaces, so a VRF namespace's bind
    mount lives there and dies with it, but its file under ``/run/netns`` stays on the
    host; the cgroups are host-wide.
    """
    removed: list[str] = []
    prefix = re.compile(rf"^kv-{re.escape(name)}-node-\d+-vrf-")
    try:
        entries = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if prefix.match(entry):
            subprocess.run(["ip", "netns", "del", entry], capture_output=True, check=False)
            removed.append(f"netns {entry}")
    parents = re.compile(rf"^kubevisor-kv-{re.escape(name)}-node-\d+$")
    for controller in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if not controller.is_dir() or controller.is_symlink():
            continue
        for parent in sorted(controller.iterdir()):
            if not parent.is_dir() or not parents.match(parent.name):
                continue
            for child in sorted(p for p in parent.iterdir() if p.is_dir()):
                _kill_members(child)  # e.g. a VRF's routing daemon
                try:
                    child.rmdir()
                except OSError:
                    continue
            try:
                parent.rmdir()
                removed.append(f"cgroup {parent}")
            except OSError:
                pass
    # the VRFs' routing daemon run directories (vrfnaming.Naming.run_dir)
    run_root = Path(RUN_ROOT)
    for run_dir in sorted(run_root.iterdir()) if run_root.is_dir() else []:
        if prefix.match(run_dir.name):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(f"run dir {run_dir}")
    return removed


#: Where the agents' VRF routing daemons keep their files (VRFRealizer's default).
RUN_ROOT = "/run/kubevisor"


def _kill_members(cgroup: Path, *, timeout: float = 10.0) -> None:
    """SIGKILL the processes of a leftover VRF cgroup and wait until it is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # polling the cgroup's emptiness, with a deadline


def gone(pid: int) -> bool:
    """The process has exited (reaped if it is our child, or a zombie of someone else)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return bool(done)
    except ChildProcessError:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"


def reap(dev: DevCluster, node: str) -> bool:
    """Reap one node's agent after something killed it (a fence step); whether it is
    gone. The agent is this process's child when ``up`` or ``start_agent`` ran here."""
    return gone(dev.pids[f"agent-{node}"])


def agent_flags(pid: int) -> list[str]:
    """The ``--flag`` arguments a running agent was started with (from /proc)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    start = next(i for i, a in enumerate(argv) if a.endswith("kubevisor-agent")) + 1
    return [a for a in argv[start:] if a]


def kill_agent(
    dev: DevCluster, node: str, *, kill_signal: int = signal.SIGKILL, timeout: float = 15.0
) -> list[str]:
    """Kill one node's agent (default ``kill -9``: no clean shutdown) and wait until it is
    gone; the flags it ran with (for :func:`start_agent`)."""
    old = dev.pids[f"agent-{node}"]
    flags = agent_flags(old)
    try:
        os.killpg(old, kill_signal)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while not gone(old):
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent of {node} (pid {old}) did not exit after {kill_signal}")
        time.sleep(0.05)
    return flags


def start_agent(dev: DevCluster, node: str, flags: Sequence[str]) -> int:
    """Start one node's agent with ``flags``; its pid (``dev.pids`` and procs.json
    updated)."""
    key = f"agent-{node}"
    sim = next(n for n in dev.nodes if n.name == node)
    argv = [*nodes.node_mount_exec_prefix(sim), str(VENV_BIN / "kubevisor-agent"), *flags]
    pid = _spawn(argv, dev.log(key))
    dev.pids[key] = pid
    (dev.cluster_dir / "procs.json").write_text(json.dumps(dev.pids, indent=2) + "\n")
    return pid


def restart_agent(
    dev: DevCluster, node: str, *, kill_signal: int = signal.SIGKILL, timeout: float = 15.0
) -> int:
    """Kill one node's agent and start it again with the same flags; the new pid.

    Why: the agent keeps no state, so a killed agent must adopt its running domains
    (same QEMU process) and converge from what the objects say — e2e tests check that.
    """
    flags = kill_agent(dev, node, kill_signal=kill_signal, timeout=timeout)
    return start_agent(dev, node, flags)


def load(name: str = "dev", *, base_dir: Path = nodes.DEFAULT_BASE_DIR) -> DevCluster | None:
    """The cluster started earlier by ``up`` (possibly another process), or None."""
    procs = base_dir / name / "procs.json"
    cp_dir = controlplane_dir(name, base_dir)
    if not procs.exists() or not (cp_dir / "state.json").exists():
        return None
    cp = controlplane.ControlPlane.load(cp_dir)
    return DevCluster(
        name=name,
        base_dir=base_dir,
        kubeconfig=cp.kubeconfig,
        kubectl=cp.kubectl,
        nodes=tuple(nodes.load_cluster_nodes(name, base_dir=base_dir)),
        pids={k: int(v) for k, v in json.loads(procs.read_text()).items()},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubevisor.devenv.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base-dir", type=Path, default=nodes.DEFAULT_BASE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--cluster", default="dev")
    p_up.add_argument("--nodes", type=int, default=2)
    p_up.add_argument("--no-controller", action="store_true")
    p_up.add_argument(
        "--no-power-switch", action="store_true",
        help="do not run devenv/nodepower (stops/starts the libvirtd of nodes the"
        " controller marks for power-off under a Consolidate RebalancePolicy)",
    )  # fmt: skip
    p_up.add_argument(
        "--agent-arg", action="append", default=[], metavar="FLAG",
        help="extra agent flag, repeatable (e.g. --agent-arg=--network=red)",
    )  # fmt: skip
    p_down = sub.add_parser("down")
    p_down.add_argument("--cluster", default="dev")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("a dev cluster needs root (namespaces, libvirtd)", file=sys.stderr)
        return 2
    if args.command == "up":
        dev = up(
            args.cluster,
            nodes_count=args.nodes,
            base_dir=args.base_dir,
            controller=not args.no_controller,
            agent_args=args.agent_arg,
            power_switch=not args.no_power_switch,
        )
        print(json.dumps({"kubeconfig": str(dev.kubeconfig), "kubectl": str(dev.kubectl),
                          "logs": str(dev.cluster_dir / "logs"), "pids": dev.pids}))  # fmt: skip
    else:
        down(args.cluster, base_dir=args.base_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
