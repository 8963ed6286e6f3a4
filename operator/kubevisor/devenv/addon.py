"""A single-node Kubernetes on this host with the kubevisor chart running as real pods.

Why: users install kubevisor with Helm; the chart's Deployment, privileged hostNetwork
DaemonSet and hostPath mounts only prove themselves when a kubelet runs them. This is
the cluster ``tests/e2e/test_addon.py`` and ``hack/up --helm`` use:

- the usual control plane (:mod:`kubevisor.devenv.controlplane`) with ServiceAccount
  admission on (pods get projected tokens), plus kube-controller-manager (Deployments,
  DaemonSets, ServiceAccounts, the root CA ConfigMap) and kube-scheduler;
- one kubelet with its own containerd (:mod:`kubevisor.devenv.kubelets`) registered as
  ``node-1``, with a node client certificate;
- the hypervisor behind that node is one simulated node (:mod:`kubevisor.devenv.nodes`):
  its own libvirtd and network namespace with ``kvbr0``, so guests, taps and bridges stay
  out of the host's network. The agent pod reaches that libvirtd through its socket
  directory (a hostPath) and does netlink in the node's namespace (``--netns``);
- the kubevisor image from ``hack/build-image.sh`` imported into containerd, pods with
  ``imagePullPolicy: Never``.

In-cluster API access: the API server listens on 127.0.0.1 and there is no kube-proxy, so
pods use the host network and the chart's ``apiServer`` values point their in-cluster
config at 127.0.0.1:<port> (see charts/kubevisor/README.md).

    python -m kubevisor.devenv.addon up [--helm]     # prints kubeconfig, helm, values
    python -m kubevisor.devenv.addon down
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubevisor.devenv import certificates, cluster, controlplane, kubelets, nodes, testing

REPO_ROOT = controlplane.REPO_ROOT
CHART = REPO_ROOT / "charts" / "kubevisor"
NODE = nodes.node_name(1)
RELEASE = "kubevisor"
NAMESPACE = "kubevisor-system"


class AddonError(RuntimeError):
    """The single-node cluster or the chart could not be brought up."""


def _script_output(script: str, *args: str) -> str:
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / script), *args],
        stdout=subprocess.PIPE, text=True, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise AddonError(f"hack/{script} failed (see its output above)")
    return done.stdout.strip().splitlines()[-1]


def helm_binary() -> Path:
    return Path(_script_output("build-helm.sh"))


def build_image() -> tuple[Path, str]:
    """The image archive (built when the package changed) and its name."""
    return Path(_script_output("build-image.sh")), _script_output("build-image.sh", "--name")


@dataclasses.dataclass(frozen=True)
class AddonCluster:
    """A running single-node cluster: how to reach it and what runs the guests."""

    name: str
    base_dir: Path
    kubeconfig: Path
    kubectl: Path
    helm: Path
    server: str
    image: str
    node: nodes.SimNode

    @property
    def cluster_dir(self) -> Path:
        return self.base_dir / self.name

    @property
    def values_file(self) -> Path:
        return self.cluster_dir / "values.yaml"

    @property
    def logs(self) -> Path:
        return self.cluster_dir / "logs"

    def run(self, tool: str, *args: str, timeout: float = 300) -> str:
        """``kubectl ARGS`` or ``helm ARGS`` against this cluster; stdout. RuntimeError
        with the tool's stderr when it fails."""
        binary = {"kubectl": self.kubectl, "helm": self.helm}[tool]
        done = subprocess.run(
            [str(binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


def chart_values(dev: AddonCluster, *, api_port: int, gateway_port: int) -> dict[str, Any]:
    """Values that run the chart on this cluster (pure): the local image, in-cluster API
    access on loopback, and the agent pointed at the simulated node's libvirtd, netns,
    state and shared directories."""
    repository, tag = dev.image.rsplit(":", 1)
    node = dev.node
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "apiServer": {"host": "127.0.0.1", "port": str(api_port)},
        "controller": {"hostNetwork": True},
        "gateway": {"hostNetwork": True, "port": gateway_port},
        "agent": {
            "libvirtSocketDir": str(node.state_dir / "run" / "libvirt"),
            "libvirtUri": "qemu+unix:///system?socket="
            + str(node.state_dir / "run" / "libvirt" / "libvirt-sock"),
            "stateDir": str(node.state_dir / "kubevisor"),
            "imageDir": str(cluster.GUEST_CACHE),
            "sharedDir": str(node.shared_dir),
            "advertiseHostIP": False,
            "networks": ["default=kvbr0"],
            "cpu": "2",
            "memory": "4Gi",
            "labels": {"kubevisor.io/hostname": node.name},
            "stopTimeout": 5,
            "extraArgs": [
                f"--netns={node.netns}",
                f"--address={node.fabric_ip}",
                f"--migration-uri={node.tcp_uri}",
            ],
        },
    }


def _state_file(name: str, base_dir: Path) -> Path:
    return base_dir / name / "addon.json"


def up(
    name: str = "addon", *, base_dir: Path = nodes.DEFAULT_BASE_DIR, install: bool = False
) -> AddonCluster:
    """Bring up everything (removing a leftover of the same name first); with
    ``install``, ``helm install`` the chart and wait until its pods are Ready."""
    down(name, base_dir=base_dir)
    cluster.ensure_images()
    helm = helm_binary()
    archive, image = build_image()
    bin_dir = kubelets.node_binaries_dir()
    sim = nodes.create_cluster_nodes(name, 1, base_dir=base_dir)[0]
    cdir = base_dir / name
    state: dict[str, Any] = {"pids": {}}
    try:
        cp = controlplane.ControlPlane(
            state_dir=cdir / "controlplane",
            service_accounts=True,
            extra_args=["--kubelet-preferred-address-types=InternalIP"],
        )
        cp.start()
        state["controlplane"] = str(cp.state_dir)
        _write_state(name, base_dir, state)
        pki = cp.pki
        certificates.issue_client(pki, "node", cn=f"system:node:{NODE}", org="system:nodes")
        node_kubeconfig = cdir / "node.kubeconfig"
        certificates.write_kubeconfig(node_kubeconfig, server=cp.server, pki=pki, user="node")
        _kubectl(cp, "create", "clusterrolebinding", "kubevisor-dev-nodes",
                 "--clusterrole=system:node", "--group=system:nodes")  # fmt: skip
        logs = cdir / "logs"
        state["pids"]["kube-controller-manager"] = kubelets._spawn(
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--authentication-kubeconfig={cp.kubeconfig}",
                f"--authorization-kubeconfig={cp.kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={controlplane.free_port()}",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        state["pids"]["kube-scheduler"] = kubelets._spawn(
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--authentication-kubeconfig={cp.kubeconfig}",
                f"--authorization-kubeconfig={cp.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={controlplane.free_port()}",
                "--v=1",
            ],
            logs / "kube-scheduler.log",
        )
        _write_state(name, base_dir, state)
        node = kubelets.KubeletNode(
            layout=kubelets.NodeLayout(
                root=cdir / "kubelet-node", name=NODE,
                kubelet_port=controlplane.free_port(), healthz_port=controlplane.free_port(),
            ),
            kubeconfig=node_kubeconfig, ca_file=pki / "ca.crt", logs=logs, bin_dir=bin_dir,
            labels={"kubevisor.io/hypervisor": "true"},
        )  # fmt: skip
        state["kubelet"] = node.to_json()
        _write_state(name, base_dir, state)
        node.start()
        state["kubelet"] = node.to_json()
        _write_state(name, base_dir, state)
        node.import_image(archive)
        dev = AddonCluster(
            name=name, base_dir=base_dir, kubeconfig=cp.kubeconfig, kubectl=cp.kubectl,
            helm=helm, server=cp.server, image=image, node=sim,
        )  # fmt: skip
        testing.wait_for(
            lambda: _node_ready(dev), timeout=120, what=f"Node {NODE} Ready",
            show=lambda: _tail(logs / "kubelet.log"),
        )  # fmt: skip
        values = chart_values(dev, api_port=cp.api_port, gateway_port=controlplane.free_port())
        dev.values_file.write_text(json.dumps(values, indent=2) + "\n")
        if install:
            helm_install(dev)
        return dev
    except BaseException:
        down(name, base_dir=base_dir)
        raise


def _kubectl(cp: controlplane.ControlPlane, *args: str) -> None:
    subprocess.run([str(cp.kubectl), f"--kubeconfig={cp.kubeconfig}", *args],
                   check=True, capture_output=True)  # fmt: skip


def _node_ready(dev: AddonCluster) -> bool:
    try:
        out = dev.run("kubectl", "get", "node", NODE, "-o",
                      "jsonpath={.status.conditions[?(@.type=='Ready')].status}")  # fmt: skip
    except RuntimeError:
        return False
    return out.strip() == "True"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def helm_install(dev: AddonCluster, *, timeout: float = 300) -> str:
    """``helm install`` the chart with this cluster's values and wait for its pods."""
    return dev.run(
        "helm", "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "-f", str(dev.values_file), "--wait", f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )  # fmt: skip


def helm_uninstall(dev: AddonCluster, *, timeout: float = 120) -> str:
    return dev.run(
        "helm", "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait",
        f"--timeout={int(timeout)}s", timeout=timeout + 30,
    )  # fmt: skip


def _write_state(name: str, base_dir: Path, state: dict[str, Any]) -> None:
    path = _state_file(name, base_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def down(name: str = "addon", *, base_dir: Path = nodes.DEFAULT_BASE_DIR) -> list[str]:
    """Stop everything ``up`` started and undo the kubelet's host changes; then destroy
    the simulated node (its libvirtd and whatever guest is left). Returns what had to be
    cleaned beyond stopping processes (empty after a clean uninstall)."""
    cleaned: list[str] = []
    path = _state_file(name, base_dir)
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    pids: dict[str, int] = state.get("pids", {})
    cp = None
    if state.get("controlplane") and (Path(state["controlplane"]) / "state.json").exists():
        cp = controlplane.ControlPlane.load(Path(state["controlplane"]))
    # no new pods from here on; then let the kubelet stop the ones there are
    if "kube-controller-manager" in pids:
        cluster._stop_pid(int(pids.pop("kube-controller-manager")))
    if cp is not None and "kubelet" in state:
        subprocess.run(
            [str(cp.kubectl), f"--kubeconfig={cp.kubeconfig}", "delete", "pods", "--all",
             "--all-namespaces", "--grace-period=5", "--timeout=60s", "--wait"],
            capture_output=True, check=False, timeout=90,
        )  # fmt: skip
    for pid in pids.values():
        cluster._stop_pid(int(pid))
    if "kubelet" in state:
        cleaned += kubelets.KubeletNode.from_json(state["kubelet"]).stop()
    if cp is not None:
        cp.stop()
    if path.exists():
        path.unlink()
    nodes.destroy_cluster_nodes(name, base_dir=base_dir)
    return cleaned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevisor.devenv.addon",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--base-dir", type=Path, default=nodes.DEFAULT_BASE_DIR)
    parser.add_argument("--cluster", default="addon")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--helm", action="store_true", help="also helm install the chart")
    sub.add_parser("down")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("a kubelet node needs root (containerd, cgroups, mounts)", file=sys.stderr)
        return 2
    if args.command == "up":
        dev = up(args.cluster, base_dir=args.base_dir, install=args.helm)
        print(json.dumps({"kubeconfig": str(dev.kubeconfig), "kubectl": str(dev.kubectl),
                          "helm": str(dev.helm), "values": str(dev.values_file),
                          "logs": str(dev.logs)}))  # fmt: skip
    else:
        for line in down(args.cluster, base_dir=args.base_dir):
            print(f"cleaned: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
