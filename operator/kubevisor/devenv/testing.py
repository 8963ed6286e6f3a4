"""Test support shared by tests/ and bench/: waiting on conditions, a controller process,
skipping on a named absence.

Waiting is by polling a predicate against a deadline (never a bare sleep): the failure
message says what was awaited and what was last seen.

Skipping: a test may skip only on a detected, named absence (`absent`), never on an
error. Under ``hack/test`` (``KUBEVISOR_REQUIRE_ALL=1``, set after ``hack/setup`` ran)
whatever setup provides must be present, so its absence fails instead of skipping; what
setup cannot provide (a kernel feature, root) stays a skip with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from kubevisor.api import nodes
from kubevisor.devenv import cluster as devcluster

T = TypeVar("T")

REQUIRE_ALL_ENV = "KUBEVISOR_REQUIRE_ALL"
"""Set to ``1`` by ``hack/test``: a missing component that hack/setup provides fails."""


def absent(what: str, *, setup_provides: bool = True) -> NoReturn:
    """Skip the calling test because ``what`` is missing here (printed, and the reason
    pytest shows); fail instead when ``setup_provides`` it and ``hack/test`` demands it."""
    import pytest

    print(f"absent: {what}")
    if setup_provides and os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{what} (hack/setup provides it; {REQUIRE_ALL_ENV}=1)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require_root(why: str) -> None:
    """`absent` unless running as root (not something setup can provide)."""
    if os.geteuid() != 0:
        absent(f"needs root: {why}", setup_provides=False)


def require_tools(*tools: str) -> None:
    """`absent` for the first of ``tools`` not on PATH (hack/setup installs them all)."""
    for tool in tools:
        if shutil.which(tool) is None:
            absent(f"{tool} not installed (hack/setup installs it)")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    every: float = 0.2,
    show: Callable[[], Any] | None = None,
) -> T:
    """Return the first truthy value of ``predicate()``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        last = value
        time.sleep(every)
    seen = show() if show is not None else last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (saw: {seen!r})")


async def wait_for_async(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float,  # noqa: ASYNC109 - the same signature as wait_for
    what: str,
    every: float = 0.2,
    show: Callable[[], Awaitable[Any]] | None = None,
) -> T:
    """`wait_for` inside a running event loop (the loop keeps running between polls, so
    in-process tasks make progress); ``predicate`` is a coroutine function (a browser's
    page, a websocket) or a plain callable."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        await asyncio.sleep(every)
    seen = await show() if show is not None else last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (saw: {seen!r})")


@contextlib.contextmanager
def running_process(
    argv: Sequence[str], *, log: Path, what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as a subprocess for the duration of the block, output into ``log``.

    Stopped with SIGTERM (SIGKILL after 30 s), as an orchestrator stops a pod; the tail of
    its log is printed so a failing test shows what the process did.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"--- {what} log tail ({log}) ---")
            print(log.read_text(errors="replace")[-4000:])


@contextlib.contextmanager
def running_controller(
    kubeconfig: Path, *, log: Path, namespaces: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``kubevisor-controller`` as a subprocess for the duration of the block
    (`running_process`: SIGTERM at the end, log tail printed)."""
    argv = [sys.executable, "-m", "kubevisor.controller.main", "--kubeconfig", str(kubeconfig)]
    for ns in namespaces:
        argv += ["--namespace", ns]
    with running_process(argv, log=log, what="controller") as proc:
        yield proc


def fake_node_lease(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    capacity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A node Lease as an agent writes it (``api/nodes``), for tests without agents.

    Valid for an hour, so it never expires mid-test; ``capacity`` (if given) becomes the
    ``kubevisor.io/capacity`` annotation on top of neutral defaults.
    """
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**(labels or {}), nodes.LABEL_AGENT: "true"},
    }
    if capacity is not None:
        cap = {
            "networks": ["default"],
            "sharedStorage": None,
            "migrationURI": None,
            "address": None,
            **capacity,
        }
        meta["annotations"] = {nodes.ANNOTATION_CAPACITY: json.dumps(cap)}
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 3600,
            "renewTime": nodes.micro_time(datetime.now(UTC)),
        },
    }


def ensure_namespace(core: Any, name: str) -> None:
    """Create namespace ``name`` unless it exists (``core``: a kubernetes CoreV1Api)."""
    import kubernetes

    try:
        core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise


#: Label on the Pods :func:`node_bound_pod` makes (delete them by it).
LABEL_NODE_BOUND_POD = "kubevisor.io/test-node-bound-pod"


def node_bound_pod(core: Any, namespace: str, name: str, *, sa: str, node: str) -> dict[str, str]:
    """A Pod of ServiceAccount ``sa`` bound to ``node`` (``spec.nodeName``), for a
    TokenRequest bound to it: the token then carries the node, as a DaemonSet pod's
    projected token does, without a kubelet (the Pod never runs). Returns the Pod's name and
    uid (a ``boundObjectRef``); an existing Pod of that name is reused."""
    import kubernetes

    body = {
        "metadata": {"name": name, "labels": {LABEL_NODE_BOUND_POD: "true"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "agent", "image": "kubevisor.invalid/never-pulled"}],
        },
    }
    try:
        pod = core.create_namespaced_pod(namespace, body)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
        pod = core.read_namespaced_pod(name, namespace)
    return {"name": pod.metadata.name, "uid": pod.metadata.uid}


def require_module(name: str) -> None:
    """`absent` unless the third-party module ``name`` is importable (hack/setup installs it).

    Only for other people's modules: importing ours must never turn into a skip, an
    ImportError there is a bug.
    """
    if importlib.util.find_spec(name) is None:
        absent(f"Python module {name} not installed (hack/setup installs it)")


@contextlib.contextmanager
def node_netns(prefix: str, *, bridge: str = "kvbr0") -> Iterator[str]:
    """A network namespace ``<prefix>-<random>`` holding the node bridge ``bridge``: the
    node of an agent under test, so its netlink stays inside a namespace the test made;
    deleted on the way out."""
    require_tools("ip")
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", bridge, "type", "bridge"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


DEV_CLUSTER_TOOLS = ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "nsenter")
"""What every dev cluster with nodes runs (hack/setup installs them)."""


@contextlib.contextmanager
def dev_cluster(
    name: str,
    *,
    tools: Sequence[str] = DEV_CLUSTER_TOOLS,
    guest: bool = True,
    **up: Any,
) -> Iterator[devcluster.DevCluster]:
    """A test module's dev cluster (``devcluster.up(name, **up)``), torn down on the way
    out whatever happened.

    Skips first on a named absence (root, ``tools``, the tiny guest unless ``guest`` is
    false); a cluster that then cannot start is a failure, not a skip (``up`` removes what
    it made before raising).
    """
    require_root("a dev cluster (namespaces, mounts, libvirtd)")
    require_tools(*tools)
    if guest:
        require_tiny_guest(devcluster.GUEST_CACHE)
    dev = devcluster.up(name, **up)
    try:
        yield dev
    finally:
        devcluster.down(name)


def require_tiny_guest(cache: Path) -> None:
    """`absent` unless the tiny guest (hack/build-guest.sh, run by hack/setup) is in ``cache``."""
    if not (cache / "tiny" / "vmlinuz").exists():
        absent(f"tiny guest missing in {cache / 'tiny'}: run hack/build-guest.sh")
