"""A real local control plane: etcd + kube-apiserver on loopback, started like envtest.

Why not a fake: schema and CEL validation, server-side apply, watches and status
subresources are the API server's behaviour, and a mock would only agree with our own
assumptions. Why not kind: there is no container engine here. So we run the two real
binaries (built by ``hack/build-controlplane.sh``) the way controller-runtime's envtest
does: generated certificates, an admin client certificate in ``system:masters``, a
service-account key pair, RBAC authorization, everything bound to 127.0.0.1.

The state directory holds certs, the kubeconfig, etcd data, logs and a ``pids`` file, so a
control plane started detached (``up``) can be found and stopped later (``down``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[3]
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.2")
DEFAULT_CACHE = Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor"))


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def binaries_dir(*, build: bool = True) -> Path:
    """Where the pinned binaries live; builds them (once, cached) when asked."""
    out = DEFAULT_CACHE / "controlplane" / f"v{KUBE_VERSION}"
    if all((out / b).exists() for b in ("kube-apiserver", "etcd", "kubectl")):
        return out
    if not build:
        raise ControlPlaneError(
            f"control-plane binaries missing in {out}; run hack/build-controlplane.sh"
        )
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-controlplane.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError("hack/build-controlplane.sh failed (see its output above)")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- certificates -----------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def generate_pki(pki: Path) -> None:
    """CA, serving cert, admin client cert (system:masters) and a service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("kubevisor-dev-ca")
    ca = _issue(subject=ca_name, key=ca_key, issuer=ca_name, issuer_key=ca_key, ca=True)
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca)

    for stem, subject, server, client in (
        ("apiserver", _name("kube-apiserver"), True, False),
        ("admin", _name("kubevisor-admin", "system:masters"), False, True),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            subject=subject,
            key=key,
            issuer=ca_name,
            issuer_key=ca_key,
            ca=False,
            server=server,
            client=client,
        )
        _write_key(pki / f"{stem}.key", key)
        _write_cert(pki / f"{stem}.crt", cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubeconfig(path: Path, *, server: str, pki: Path) -> None:
    """A kubeconfig with absolute file references, usable by kubectl, kopf and the clients."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubevisor-dev",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "kubevisor-admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubevisor-dev",
                "context": {
                    "cluster": "kubevisor-dev",
                    "user": "kubevisor-admin",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "kubevisor-dev",
    }
    # JSON is valid YAML; no YAML dependency needed here.
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --- processes --------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """One etcd + kube-apiserver pair rooted in ``state_dir``."""

    state_dir: Path
    bin_dir: Path = field(default_factory=binaries_dir)
    etcd_port: int = 0
    api_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    """More kube-apiserver flags (e.g. an audit policy for a benchmark); appended last."""

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def start(self, *, timeout: float = 120.0) -> None:
        """Start etcd and the API server; return once /readyz answers ok."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self.etcd_port = self.etcd_port or free_port()
        self.api_port = self.api_port or free_port()
        generate_pki(self.pki)
        write_kubeconfig(self.kubeconfig, server=self.server, pki=self.pki)
        peer_port = free_port()
        etcd_data = self.state_dir / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)
        try:
            self._spawn(
                "etcd",
                [
                    str(self.bin_dir / "etcd"),
                    f"--data-dir={etcd_data}",
                    f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync=true",
                    "--quota-backend-bytes=4294967296",
                ],
            )
            self._spawn(
                "kube-apiserver",
                [
                    str(self.bin_dir / "kube-apiserver"),
                    "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.api_port}",
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    f"--cert-dir={self.pki}",
                    f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                    f"--client-ca-file={self.pki / 'ca.crt'}",
                    f"--service-account-issuer={self.server}",
                    f"--service-account-key-file={self.pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount",
                    "--allow-privileged=true",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "--v=1",
                    *self.extra_args,
                ],
            )
            self._write_state()
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pids[name] = proc.pid

    def _write_state(self) -> None:
        state = {
            "pids": self.pids,
            "etcd_port": self.etcd_port,
            "api_port": self.api_port,
            "bin_dir": str(self.bin_dir),
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlane:
        """Find a control plane started earlier (e.g. by ``up``) from its state file."""
        state = json.loads((state_dir / "state.json").read_text())
        return cls(
            state_dir=state_dir,
            bin_dir=Path(state["bin_dir"]),
            etcd_port=state["etcd_port"],
            api_port=state["api_port"],
            pids={k: int(v) for k, v in state["pids"].items()},
        )

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def readyz(self) -> bool:
        return self._get_ok("/readyz")

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    log = self.state_dir / "logs" / f"{name}.log"
                    raise ControlPlaneError(f"{name} exited during start-up; see {log}")
            if self.readyz():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"kube-apiserver not ready within {timeout:.0f}s; see {self.state_dir}/logs"
        )

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM both (API server first), SIGKILL what lingers; idempotent."""
        for name in ("kube-apiserver", "etcd"):
            pid = self.pids.get(name)
            if pid is None:
                continue
            _terminate(pid, timeout=timeout)
        self.pids.clear()
        state = self.state_dir / "state.json"
        if state.exists():
            state.unlink()

    def kubectl_apply(self, path: Path) -> None:
        subprocess.run(
            [
                str(self.kubectl),
                f"--kubeconfig={self.kubeconfig}",
                "apply",
                "--server-side",
                "-f",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def install_crds(self, crd_dir: Path = REPO_ROOT / "crds", *, timeout: float = 60.0) -> None:
        """Apply every CRD and wait until each is Established and served by discovery."""
        files = sorted(crd_dir.glob("*.yaml"))
        if not files:
            return
        self.kubectl_apply(crd_dir)
        subprocess.run(
            [
                str(self.kubectl),
                f"--kubeconfig={self.kubeconfig}",
                "wait",
                "--for=condition=Established",
                f"--timeout={int(timeout)}s",
                *[f"--filename={f}" for f in files],
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [
                    str(self.kubectl),
                    f"--kubeconfig={self.kubeconfig}",
                    "api-resources",
                    "--api-group=kubevisor.io",
                    "-o",
                    "name",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if len(out) >= len(files):
                break
            time.sleep(0.2)
        else:
            raise ControlPlaneError("kubevisor.io resources did not appear in discovery")
        # Discovery lists a new resource before its storage is ready ("storage is
        # (re)initializing", 429); wait until every one can be listed, so clients that start
        # right after this do not begin with a burst of retries.
        plurals = [name.split(".", 1)[0] for name in out]
        while time.monotonic() < deadline:
            if all(self._get_ok(f"/apis/kubevisor.io/v1alpha1/{p}?limit=1") for p in plurals):
                return
            time.sleep(0.2)
        raise ControlPlaneError("kubevisor.io resources were not listable in time")

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server}{path}", context=self._ssl_context(), timeout=5
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is not alive either.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


def _terminate(pid: int, *, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevisor-devenv-controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down", "status"):
        p = sub.add_parser(cmd)
        p.add_argument("--dir", type=Path, default=Path("/var/lib/kubevisor-dev/dev/controlplane"))
    args = parser.parse_args(argv)
    state_dir: Path = args.dir
    if args.cmd == "up":
        if (state_dir / "state.json").exists():
            cp = ControlPlane.load(state_dir)
            if cp.readyz():
                print(cp.kubeconfig)
                return 0
            cp.stop()
        cp = ControlPlane(state_dir=state_dir)
        cp.start()
        cp.install_crds()
        print(cp.kubeconfig)
        return 0
    if args.cmd == "down":
        if (state_dir / "state.json").exists():
            ControlPlane.load(state_dir).stop()
        return 0
    if (state_dir / "state.json").exists() and ControlPlane.load(state_dir).readyz():
        print(f"ready: {ControlPlane.load(state_dir).server}")
        return 0
    print("not running")
    return 1


if __name__ == "__main__":
    sys.exit(main())
