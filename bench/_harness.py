"""Shared pieces of the benchmarks: percentiles, an audited control plane, child
processes that are always stopped, a watch that timestamps phases, and audit-log counting.

Why an audit log: "API writes per VM" must be what the API server received, not what our
own code believes it sent. kube-apiserver's audit backend records every write (verb,
subresource, user agent) at ResponseComplete; we count those per object name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubevisor.api import groups, kinds, nodes

VM_PLURAL = kinds.VIRTUALMACHINE.plural
USER_AGENT = "kvbench"

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Request
    verbs: ["update", "patch"]
    resources:
      - group: kubevisor.io
        resources: ["virtualmachines/status"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
    resources:
      - group: kubevisor.io
        resources: ["virtualmachines"]
  - level: None
"""


# --- statistics (pure) ------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p95: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats:
        data = list(values)
        if not data:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(data), percentile(data, 50), percentile(data, 95), max(data), sum(data) / len(data)
        )

    def json(self, digits: int = 3) -> dict[str, float | int | None]:
        def r(x: float) -> float | None:
            return None if math.isnan(x) else round(x, digits)

        return {"n": self.n, "p50": r(self.p50), "p95": r(self.p95), "max": r(self.max),
                "mean": r(self.mean)}  # fmt: skip


def parse_time(text: str) -> float:
    """RFC 3339 (``Z`` or offset, any fraction) to a POSIX timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- audit log (pure parsing) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditWrite:
    name: str
    namespace: str
    verb: str
    subresource: str
    user_agent: str
    code: int
    received: float
    """POSIX time the API server received the request."""
    field_manager: str = ""
    phase: str = ""
    """``status.phase`` in the request body of a status write (audit level Request)."""
    node: str = ""
    """``status.nodeName`` in the request body of a status write."""

    @property
    def writer(self) -> str:
        """Who wrote: the benchmark's client (the user), the controller or an agent.

        Controller and agent share a client library (same user agent), so the field
        manager in the URL decides; the one write without one is the agent's finalizer
        JSON patch (the controller's metadata patch names its field manager).
        """
        if self.user_agent.startswith(USER_AGENT):
            return "user"
        if "kopf" in self.user_agent.lower() or "controller" in self.field_manager:
            return "controller"
        return "agent"


def read_audit(path: Path, *, namespace: str) -> list[AuditWrite]:
    """Every VirtualMachine write in ``namespace`` from a JSON-lines audit log."""
    out: list[AuditWrite] = []
    if not path.exists():
        return out
    with open(path) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            ref = ev.get("objectRef") or {}
            if ref.get("resource") != VM_PLURAL or ref.get("namespace") != namespace:
                continue
            if ev.get("stage") != "ResponseComplete":
                continue
            query = parse_qs(urlsplit(ev.get("requestURI") or "").query)
            body = ev.get("requestObject")
            phase = node = ""
            if isinstance(body, dict):
                phase = str((body.get("status") or {}).get("phase") or "")
                node = str((body.get("status") or {}).get("nodeName") or "")
            out.append(
                AuditWrite(
                    name=ref.get("name") or "",
                    namespace=namespace,
                    verb=ev.get("verb", ""),
                    subresource=ref.get("subresource") or "",
                    user_agent=ev.get("userAgent") or "",
                    code=int((ev.get("responseStatus") or {}).get("code") or 0),
                    received=parse_time(ev["requestReceivedTimestamp"]),
                    field_manager=(query.get("fieldManager") or [""])[0],
                    phase=phase,
                    node=node,
                )
            )
    return out


@dataclasses.dataclass(frozen=True)
class WriteCounts:
    """Mean writes per VM, split the ways the issue asks for."""

    vms: int
    total: float
    """All writes, the user's create included."""
    status: float
    """Writes to the status subresource (controller + agent)."""
    metadata: float
    """Non-status writes by controller/agent (finalizers, labels, bookkeeping)."""
    by_writer: dict[str, float]
    failed: float
    """Writes the server refused (409 conflicts etc.), included in the above."""
    max_status: int

    def json(self) -> dict[str, Any]:
        writers = {k: round(v, 2) for k, v in sorted(self.by_writer.items())}
        return {"total": round(self.total, 2), "status": round(self.status, 2),
                "metadata": round(self.metadata, 2), "failed": round(self.failed, 2),
                "max_status": self.max_status, "by_writer": writers}  # fmt: skip


def count_writes(
    writes: Iterable[AuditWrite], *, names: Iterable[str], until: dict[str, float] | None = None
) -> WriteCounts:
    """Writes per VM (pure). With ``until`` (name -> POSIX time), only writes received up
    to that VM's time count: "writes to reach Running"."""
    wanted = set(names)
    per: dict[str, list[AuditWrite]] = {n: [] for n in wanted}
    for w in writes:
        if w.name not in wanted:
            continue
        if until is not None and w.received > until.get(w.name, math.inf):
            continue
        if w.verb == "delete":
            continue
        per[w.name].append(w)
    n = max(len(per), 1)
    status_each = [sum(1 for w in ws if w.subresource == "status") for ws in per.values()]
    writers: dict[str, int] = {}
    for ws in per.values():
        for w in ws:
            writers[w.writer] = writers.get(w.writer, 0) + 1
    all_writes = [w for ws in per.values() for w in ws]
    return WriteCounts(
        vms=len(per),
        total=len(all_writes) / n,
        status=sum(status_each) / n,
        metadata=sum(1 for w in all_writes if w.subresource != "status" and w.writer != "user") / n,
        by_writer={k: v / n for k, v in writers.items()},
        failed=sum(1 for w in all_writes if w.code >= 400) / n,
        max_status=max(status_each, default=0),
    )


# --- processes --------------------------------------------------------------------------


def vm_hwm_mb(status: str) -> float | None:
    """The peak RSS (``VmHWM``, kB) in a /proc/PID/status text, in MB (pure)."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class Processes:
    """Child processes in their own sessions, stopped (TERM, then KILL) on ``stop_all``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd="/",
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of every live child, MB, by name."""
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(OSError):
                mb = vm_hwm_mb(Path(f"/proc/{proc.pid}/status").read_text())
                if mb is not None:
                    out[name] = mb
        return out

    def stop_all(self, *, timeout: float = 15.0) -> None:
        for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            alive = [p for p in self.procs.values() if p.poll() is None]
            for p in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        self.procs.clear()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so ``finally`` cleanup runs for both.

    SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python
    then installs no handler for it.

    A process forked from this one inherits the handler: pyroute2 forks a child per
    namespace socket and stops it with SIGTERM; raising there would let the child run on
    as a copy of the parent (seen: a copy of the netlink worker thread, forever). A forked
    child therefore exits at once, as the default action would.
    """
    owner = os.getpid()

    def handler(sig: int, _frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + sig)
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def wait_for(what: str, check: Callable[[], Any], *, timeout: float, every: float = 0.2) -> Any:
    """Poll ``check`` until truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --- Kubernetes client side ---------------------------------------------------------------


def api_client(kubeconfig: Path, *, pool: int = 16) -> Any:
    """A sync client with our user agent (so the audit log tells the user's writes apart)."""
    import kubernetes

    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    api = kubernetes.client.ApiClient(cfg)
    api.user_agent = USER_AGENT
    return api


class PhaseWatch:
    """Watches VirtualMachines of a namespace in a thread; records, per name, the first
    monotonic and wall time the phase was seen as ``phase``, and the last object."""

    def __init__(self, api: Any, namespace: str, *, phase: str = "Running") -> None:
        import kubernetes

        self._k = kubernetes
        self.custom: Any = kubernetes.client.CustomObjectsApi(api)
        self.namespace = namespace
        self.phase = phase
        self.seen_mono: dict[str, float] = {}
        self.seen_wall: dict[str, float] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="phase-watch", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> PhaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _record(self, obj: dict[str, Any]) -> None:
        now_m, now_w = time.monotonic(), time.time()
        name = obj["metadata"]["name"]
        with self._lock:
            self.objects[name] = obj
            if (obj.get("status") or {}).get("phase") == self.phase and name not in self.seen_mono:
                self.seen_mono[name] = now_m
                self.seen_wall[name] = now_w

    def _run(self) -> None:
        g, v = groups.GROUP, groups.VERSION
        while not self._stop.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(g, v, self.namespace, VM_PLURAL)
                for obj in listed["items"]:
                    self._record(obj)
                rv = listed["metadata"]["resourceVersion"]
                w: Any = self._k.watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(
                    self.custom.list_namespaced_custom_object, g, v, self.namespace, VM_PLURAL,
                    resource_version=rv, timeout_seconds=5, allow_watch_bookmarks=False,
                ):  # fmt: skip
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._record(ev["object"])
                    elif ev["type"] == "DELETED":
                        with self._lock:
                            self.objects.pop(ev["object"]["metadata"]["name"], None)
                    if self._stop.is_set():
                        w.stop()
                        break
            except Exception as exc:  # 410 Gone, connection reset: list again
                self.error = exc
                time.sleep(0.2)

    def count(self, names: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for n in names if n in self.seen_mono)

    def phases(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for obj in self.objects.values():
                p = (obj.get("status") or {}).get("phase") or "-"
                out[p] = out.get(p, 0) + 1
        return out


def create_all(
    api: Any,
    namespace: str,
    bodies: list[dict[str, Any]],
    *,
    concurrency: int,
    interval: float = 0.0,
) -> dict[str, float]:
    """Create every object with ``concurrency`` client threads; name -> monotonic time the
    create request was sent. ``interval`` > 0 paces the submissions (an arrival rate,
    not a synchronisation): object i is submitted at ``i * interval``."""
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api)
    sent: dict[str, float] = {}

    def one(body: dict[str, Any]) -> None:
        sent[body["metadata"]["name"]] = time.monotonic()
        custom.create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, VM_PLURAL, body
        )

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = []
        for i, body in enumerate(bodies):
            if interval > 0:
                time.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            futures.append(pool.submit(one, body))
        for f in futures:
            f.result()
    return sent


def delete_all_vms(api: Any, namespace: str, *, timeout: float) -> int:
    """Delete every VM in the namespace and wait until they are gone; returns how many
    were left when the deadline passed (0 = all gone)."""
    import kubernetes

    custom: Any = kubernetes.client.CustomObjectsApi(api)
    g, v = groups.GROUP, groups.VERSION

    def left() -> list[str]:
        items = custom.list_namespaced_custom_object(g, v, namespace, VM_PLURAL)["items"]
        return [i["metadata"]["name"] for i in items]

    with contextlib.suppress(kubernetes.client.ApiException):
        custom.delete_collection_namespaced_custom_object(g, v, namespace, VM_PLURAL)
    try:
        wait_for(f"VMs in {namespace} to be deleted", lambda: not left(), timeout=timeout)
    except TimeoutError:
        return len(left())
    return 0


def ensure_namespace(api: Any, name: str) -> None:
    import kubernetes

    core: Any = kubernetes.client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise


def nodes_with_leases(api: Any, names: Iterable[str]) -> bool:
    """True once every node has a Lease with a capacity annotation (placement needs it)."""
    import kubernetes

    coord: Any = kubernetes.client.CoordinationV1Api(api)
    have = {
        lease.metadata.name
        for lease in coord.list_namespaced_lease(nodes.LEASE_NAMESPACE).items
        if nodes.ANNOTATION_CAPACITY in (lease.metadata.annotations or {})
    }
    return set(names) <= have


def server_times(writes: Iterable[AuditWrite]) -> dict[str, dict[str, float]]:
    """Per VM, when the API server received (pure; needs audit level Request on status):
    ``created`` the user's create, ``placed`` the controller's first status write naming
    a node, ``running`` the first status write setting phase Running."""
    out: dict[str, dict[str, float]] = {}
    for w in sorted(writes, key=lambda w: w.received):
        if w.code >= 400:
            continue
        times = out.setdefault(w.name, {})
        if w.verb == "create" and w.writer == "user":
            times.setdefault("created", w.received)
        elif w.subresource == "status" and w.writer == "controller" and w.node:
            times.setdefault("placed", w.received)
        if w.subresource == "status" and w.phase == "Running":
            times.setdefault("running", w.received)
    return out


def spans(times: dict[str, dict[str, float]], start: str, end: str) -> list[float]:
    """``end - start`` for every VM that has both (pure)."""
    return [t[end] - t[start] for t in times.values() if start in t and end in t]
