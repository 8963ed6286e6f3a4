"""A real kubelet with its own containerd on this host, and a teardown that undoes it.

Why: the Helm chart must run as real pods (a Deployment, a privileged hostNetwork
DaemonSet with hostPath mounts), which needs a real kubelet and container runtime — no
container engine or kind here. ``hack/build-node.sh`` builds kubelet (same pinned release
as the API server) and a pause image; containerd, runc and the CNI plugins are Debian's.

What was needed on these machines (docs/dev/kubelet-node.md has the findings):
containerd's CRI ``restrict_oom_score_adj = true`` (a negative ``oom_score_adj`` is
refused here, and every sandbox fails without it) and kubelet's ``failCgroupV1: false``.

Everything lives under one directory: containerd's root, state and socket (a private
instance, not the host's ``/run/containerd``), the kubelet's root, pod logs and CNI config.
The kubelet still changes the host — sysctls, ``kubepods`` cgroups, iptables chains, a
shared bind mount of its root dir, pod volume mounts — so :meth:`KubeletNode.start`
records the sysctls and chains first and :meth:`KubeletNode.stop` puts them back and
removes what it made. Config rendering is pure (``render_*``) and unit-tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

from kubevisor.devenv import cluster, controlplane, testing

#: Values the kubelet sets at start (``protectKernelDefaults: false``); restored by stop.
KUBELET_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory")
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES_TABLES = ("filter", "nat", "mangle")


class NodeError(RuntimeError):
    """containerd or the kubelet could not be built, started or stopped cleanly."""


def node_binaries_dir(*, build: bool = True) -> Path:
    """kubelet, kube-scheduler, kube-controller-manager and pause.oci.tar (built once)."""
    out = controlplane.DEFAULT_CACHE / "node" / f"v{controlplane.KUBE_VERSION}"
    names = ("kubelet", "kube-scheduler", "kube-controller-manager", "pause.oci.tar")
    if all((out / b).exists() for b in names):
        return out
    if not build:
        raise NodeError(f"node binaries missing in {out}; run hack/build-node.sh")
    done = subprocess.run(
        ["bash", str(controlplane.REPO_ROOT / "hack" / "build-node.sh")],
        stdout=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise NodeError("hack/build-node.sh failed (see its output above)")
    return Path(done.stdout.strip().splitlines()[-1])


def pause_image() -> str:
    return f"kubevisor.local/pause:v{controlplane.KUBE_VERSION}"


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """Where one node's runtime and kubelet keep their files (all under ``root``)."""

    root: Path
    name: str
    kubelet_port: int
    healthz_port: int
    node_ip: str = "10.79.255.1"
    """The Node's InternalIP, added to ``lo`` (no dummy module here): the kubelet refuses
    a loopback (127/8) node IP, and without an address pods get no ``status.hostIP``.
    Local only: traffic to a local address never leaves the host."""

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_bridge(self) -> str:
        return f"kvpod-{self.name}"[:15]


def render_containerd_config(layout: NodeLayout) -> str:
    """containerd 1.6 config (version 2): private root/state/socket, CRI with our pause
    image, runc without systemd cgroups, CNI from Debian's plugins (pure)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{layout.containerd_root}"',
            f'state = "{layout.containerd_state}"',
            # the opt plugin would create /opt/containerd on the host
            'disabled_plugins = ["io.containerd.internal.v1.opt",'
            ' "io.containerd.tracing.processor.v1.otlp"]',
            "[grpc]",
            f'  address = "{layout.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{layout.containerd_socket}.ttrpc"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            f"[{cri}]",
            f'  sandbox_image = "{pause_image()}"',
            # required here: writing a negative oom_score_adj is refused (no
            # CAP_SYS_RESOURCE), and runc then fails every sandbox
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{layout.cni_conf_dir}"',
            "",
        ]
    )


def render_cni_config(layout: NodeLayout, *, subnet: str = "10.244.0.0/24") -> str:
    """A bridge + host-local network for pods that are not hostNetwork (pure). The
    kubelet reports the node NotReady without one, even when every pod is hostNetwork."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "kubevisor-dev",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.cni_bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def render_kubelet_config(layout: NodeLayout, *, ca_file: Path) -> dict[str, object]:
    """KubeletConfiguration (pure): serving on the node IP only (a local dummy address),
    anonymous there (so the API server's ``logs``/``exec`` work without a kubelet client
    certificate), cgroupfs,
    cgroup v1 allowed, no iptables chains, eviction and image GC that keep our imported
    images (they cannot be pulled again)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.node_ip,
        "port": layout.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.healthz_port,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "podLogsDir": str(layout.pod_logs),
        "makeIPTablesUtilChains": False,
        "protectKernelDefaults": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "registerNode": True,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }


# --- host state the kubelet changes ------------------------------------------------------


def read_sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    for key in KUBELET_SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        with contextlib.suppress(OSError):
            out[key] = path.read_text().strip()
    return out


def restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        with contextlib.suppress(OSError):
            path.write_text(value + "\n")


def iptables_chains(tool: str = "iptables") -> dict[str, set[str]]:
    """The user chains of each table (``iptables-save``), to find the ones added later."""
    chains: dict[str, set[str]] = {}
    for table in IPTABLES_TABLES:
        done = subprocess.run(
            [f"{tool}-save", "-t", table], capture_output=True, text=True, check=False
        )
        chains[table] = {
            line[1:].split()[0] for line in done.stdout.splitlines() if line.startswith(":")
        }
    return chains


def remove_new_kube_chains(before: dict[str, set[str]], tool: str = "iptables") -> list[str]:
    """Delete ``KUBE-*`` chains that were not there before (and the rules jumping to
    them): e.g. KUBE-FIREWALL, which drops non-loopback traffic to 127/8. Returns them."""
    removed: list[str] = []
    now = iptables_chains(tool)
    for table, chains in now.items():
        new = sorted(c for c in chains - before.get(table, set()) if c.startswith("KUBE-"))
        if not new:
            continue
        rules = subprocess.run(
            [f"{tool}-save", "-t", table], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if rule.startswith("-A ") and "-j" in words and words[words.index("-j") + 1] in new:
                if words[1] in new:
                    continue  # goes with the chain
                subprocess.run([tool, "-t", table, "-D", *words[1:]], capture_output=True,
                               check=False)  # fmt: skip
        for chain in new:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in new:
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True, check=False)
            removed.append(f"{tool} {table} {chain}")
    return removed


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (to unmount in order)."""
    targets: list[str] = []
    prefix = str(root).rstrip("/")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            targets.append(target)
    return sorted(set(targets), key=lambda t: (-t.count("/"), t))


def unmount_all(root: Path) -> None:
    for _ in range(5):  # the kubelet's shared self-bind can be stacked
        targets = mounts_under(root)
        if not targets:
            return
        for target in targets:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def remove_cgroups(name: str = "kubepods") -> list[str]:
    """Remove the kubelet's ``kubepods`` cgroup trees (empty once the pods are gone),
    deepest first, in every v1 controller hierarchy."""
    removed: list[str] = []
    if not CGROUP_ROOT.is_dir():
        return removed
    for controller in sorted(CGROUP_ROOT.iterdir()):
        top = controller / name
        if controller.is_symlink() or not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if not top.exists():
            removed.append(str(top))
    return removed


def kill_shims(socket: Path) -> None:
    """SIGKILL containerd shims of our containerd (they outlive it by design)."""
    needle = str(socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _spawn(argv: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd="/",
        )  # fmt: skip
    return proc.pid


@dataclasses.dataclass
class KubeletNode:
    """containerd + kubelet for node ``layout.name``, registered with the API server of
    ``kubeconfig`` (a node client certificate). ``logs``: where both write their logs."""

    layout: NodeLayout
    kubeconfig: Path
    ca_file: Path
    logs: Path
    bin_dir: Path = dataclasses.field(default_factory=node_binaries_dir)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    pids: dict[str, int] = dataclasses.field(default_factory=dict)
    saved_sysctls: dict[str, str] = dataclasses.field(default_factory=dict)
    saved_chains: dict[str, dict[str, set[str]]] = dataclasses.field(default_factory=dict)

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", f"--address={self.layout.containerd_socket}", "--namespace=k8s.io", *args]

    def start(self, *, timeout: float = 120.0) -> None:
        """Start containerd, import the pause image, start the kubelet; return once the
        containerd socket answers (the Node's readiness is the caller's to wait for)."""
        lay = self.layout
        for d in (lay.root, lay.cni_conf_dir, lay.kubelet_root, lay.pod_logs, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        lay.containerd_config.write_text(render_containerd_config(lay))
        (lay.cni_conf_dir / "10-kubevisor.conflist").write_text(render_cni_config(lay))
        lay.kubelet_config.write_text(
            json.dumps(render_kubelet_config(lay, ca_file=self.ca_file), indent=2) + "\n"
        )
        self.saved_sysctls = read_sysctls()
        subprocess.run(["ip", "addr", "replace", f"{lay.node_ip}/32", "dev", "lo"], check=True)
        self.saved_chains = {t: iptables_chains(t) for t in ("iptables", "ip6tables")}
        self.pids["containerd"] = _spawn(
            ["containerd", f"--config={lay.containerd_config}"], self.logs / "containerd.log"
        )
        testing.wait_for(
            lambda: subprocess.run(self.ctr("version"), capture_output=True).returncode == 0,
            timeout=timeout, what=f"containerd on {lay.containerd_socket}",
        )  # fmt: skip
        self.import_image(self.bin_dir / "pause.oci.tar")
        self.pids["kubelet"] = _spawn(
            [
                str(self.bin_dir / "kubelet"),
                f"--config={lay.kubelet_config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={lay.kubelet_root}",
                f"--cert-dir={lay.kubelet_root / 'pki'}",
                f"--hostname-override={lay.name}",
                f"--node-ip={lay.node_ip}",
                *([f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(self.labels.items()))}"]
                  if self.labels else []),
                "--v=1",
            ],
            self.logs / "kubelet.log",
        )  # fmt: skip

    def import_image(self, archive: Path) -> None:
        """``ctr images import`` an OCI archive (kept when its digest is already there)."""
        done = subprocess.run(
            self.ctr("images", "import", "--no-unpack=false", str(archive)),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise NodeError(f"ctr images import {archive}: {done.stderr.strip()}")

    def stop(self) -> list[str]:
        """Stop the kubelet and containerd, kill leftover containers, and undo what the
        kubelet changed on the host. Returns what was cleaned beyond the processes.

        Pods should be deleted first (through the API, with the kubelet running) so that
        containers stop and volumes unmount cleanly; this also copes when they were not.
        """
        cleaned: list[str] = []
        if "kubelet" in self.pids:
            cluster._stop_pid(self.pids.pop("kubelet"))
        if "containerd" in self.pids and Path(f"/proc/{self.pids['containerd']}").exists():
            cleaned += self._kill_containers()
        if "containerd" in self.pids:
            cluster._stop_pid(self.pids.pop("containerd"))
        kill_shims(self.layout.containerd_socket)
        unmount_all(self.layout.root)
        cleaned += remove_cgroups()
        subprocess.run(["ip", "link", "del", self.layout.cni_bridge], capture_output=True,
                       check=False)  # fmt: skip
        subprocess.run(["ip", "addr", "del", f"{self.layout.node_ip}/32", "dev", "lo"],
                       capture_output=True, check=False)  # fmt: skip
        restore_sysctls(self.saved_sysctls)
        for tool, chains in self.saved_chains.items():
            cleaned += remove_new_kube_chains(chains, tool)
        return cleaned

    def _kill_containers(self) -> list[str]:
        tasks = subprocess.run(self.ctr("tasks", "ls", "-q"), capture_output=True, text=True,
                               check=False).stdout.split()  # fmt: skip
        for task in tasks:
            subprocess.run(self.ctr("tasks", "kill", "-s", "SIGKILL", task), capture_output=True,
                           check=False)  # fmt: skip
            subprocess.run(self.ctr("tasks", "delete", "-f", task), capture_output=True,
                           check=False)  # fmt: skip
        return [f"container {t}" for t in tasks]

    def to_json(self) -> dict[str, object]:
        return {
            "layout": {k: str(v) for k, v in dataclasses.asdict(self.layout).items()},
            "kubeconfig": str(self.kubeconfig), "ca_file": str(self.ca_file),
            "logs": str(self.logs), "bin_dir": str(self.bin_dir), "pids": self.pids,
            "saved_sysctls": self.saved_sysctls,
            "saved_chains": {t: {k: sorted(v) for k, v in c.items()}
                             for t, c in self.saved_chains.items()},
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> KubeletNode:
        lay: dict[str, str] = data["layout"]  # type: ignore[assignment]
        chains: dict[str, dict[str, list[str]]] = data["saved_chains"]  # type: ignore[assignment]
        return cls(
            layout=NodeLayout(root=Path(lay["root"]), name=lay["name"],
                              kubelet_port=int(lay["kubelet_port"]),
                              healthz_port=int(lay["healthz_port"]), node_ip=lay["node_ip"]),
            kubeconfig=Path(str(data["kubeconfig"])), ca_file=Path(str(data["ca_file"])),
            logs=Path(str(data["logs"])), bin_dir=Path(str(data["bin_dir"])),
            pids={k: int(v) for k, v in data["pids"].items()},  # type: ignore[attr-defined]
            saved_sysctls=dict(data["saved_sysctls"]),  # type: ignore[call-overload]
            saved_chains={t: {k: set(v) for k, v in c.items()} for t, c in chains.items()},
        )  # fmt: skip
