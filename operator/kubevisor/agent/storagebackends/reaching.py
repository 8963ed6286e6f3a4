"""Which StorageBackends this node reaches, published in its Lease (``nodes.Capacity
.storage_backends``) for placement and the migration preconditions.

Reaching means: ``local`` always (the node's own disk directory); ``shared`` when the
node has a shared directory; ``nfs`` / ``iscsi`` when a TCP connection to the server's
NFS port (2049) or the target's portal opens from the node's network (``--netns``, where
the node's libvirtd and QEMU are) within a few seconds — the path QEMU's own clients
(libnfs, libiscsi) take. A login or a CHAP refusal is not seen here: it is the VM's
condition when its disk is opened.

:func:`probes`, :func:`reached` and :func:`changes` are pure (table-tested); :func:`probe`
and :func:`run` are the thin adapter (asyncio connect, never blocking the loop). A change
of reach is an Event on the StorageBackend (:func:`changes`): a Warning
``StorageUnreachable`` when this node loses it (or cannot reach it at start), a Normal
``StorageReachable`` when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Final

from kubevisor.agent.kernel import netnsthreads
from kubevisor.agent.storagebackends import catalog

logger = logging.getLogger(__name__)

NFS_PORT: Final = 2049
CONNECT_TIMEOUT_S: Final = 3.0
INTERVAL_S: Final = 15.0


@dataclasses.dataclass(frozen=True)
class Probe:
    """What reaching one backend takes here: nothing, a directory, or a TCP endpoint."""

    name: str
    type: str
    endpoint: tuple[str, int] | None = None
    directory: Path | None = None
    possible: bool = True
    """False when this node cannot reach it whatever happens (shared without a dir)."""


def probes(objects: Iterable[Mapping[str, Any]], *, shared_dir: Path | None) -> list[Probe]:
    """The probe of each StorageBackend object (pure); unreadable objects are skipped
    (:func:`catalog.specs_of`)."""
    out = []
    for name, spec in catalog.specs_of(objects).items():
        if spec.type == "local":
            out.append(Probe(name, spec.type))
        elif spec.type == "shared":
            out.append(
                Probe(name, spec.type, directory=shared_dir, possible=shared_dir is not None)
            )
        elif spec.type == "nfs" and spec.nfs is not None:
            out.append(Probe(name, spec.type, endpoint=(spec.nfs.server, NFS_PORT)))
        elif spec.type == "iscsi" and spec.iscsi is not None:
            out.append(Probe(name, spec.type, endpoint=(spec.iscsi.portal, spec.iscsi.port)))
    return sorted(out, key=lambda p: p.name)


def reached(results: Iterable[tuple[Probe, bool]]) -> dict[str, str]:
    """Name -> type of the backends whose probe succeeded (pure)."""
    return {p.name: p.type for p, ok in results if ok and p.possible}


async def probe(p: Probe, executor: Executor | None = None) -> bool:
    """Run one probe: a directory that exists, a TCP connect that opens in time — on
    ``executor``'s threads when given (the node's network namespace,
    ``kernel.netnsthreads``), else from the agent's own network."""
    if not p.possible:
        return False
    if p.directory is not None:
        return await asyncio.to_thread(p.directory.is_dir)
    if p.endpoint is None:
        return True
    if executor is not None:
        loop = asyncio.get_running_loop()
        host, port = p.endpoint
        return await loop.run_in_executor(
            executor, netnsthreads.tcp_connects, host, port, CONNECT_TIMEOUT_S
        )
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(*p.endpoint)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


Announce = Callable[[dict[str, Any], str, str], Awaitable[None]]
"""Post an Event (object, reason, message): ``agent/kube/events.Recorder.post``."""


def changes(
    before: Mapping[str, str] | None,
    after: Mapping[str, str],
    todo: Iterable[Probe],
    *,
    node: str,
) -> list[tuple[str, str, str]]:
    """(backend, reason, message) of each change of reach this round (pure). ``before``
    None: the first round, where only what is unreachable is news."""
    out = []
    for p in todo:
        if not p.possible:
            continue  # shared without a directory: never this node's, not a failure
        was = before is not None and p.name in before
        now = p.name in after
        how = f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else str(p.directory or "")
        if not now and (before is None or was):
            lost = f"node {node} cannot reach {p.type} backend {p.name} ({how})."
            out.append((p.name, "StorageUnreachable", lost))
        elif now and before is not None and not was:
            out.append((p.name, "StorageReachable", f"node {node} reaches {p.name} again."))
    return out


async def reach_once(
    list_backends: Callable[[], Awaitable[list[dict[str, Any]]]],
    *,
    shared_dir: Path | None,
    executor: Executor | None = None,
    before: Mapping[str, str] | None = None,
    announce: Announce | None = None,
    node: str = "",
) -> dict[str, str]:
    """List the backends and probe them all at once; with ``announce``, post the changes
    since ``before`` (:func:`changes`) on the backends' objects."""
    listed = await list_backends()
    todo = probes(listed, shared_dir=shared_dir)
    results = await asyncio.gather(*(probe(p, executor) for p in todo))
    found = reached(zip(todo, results, strict=True))
    if announce is not None:
        by_name = {str((o.get("metadata") or {}).get("name")): o for o in listed}
        for name, reason, message in changes(before, found, todo, node=node):
            await announce(by_name[name], reason, message)
    return found


async def run(
    list_backends: Callable[[], Awaitable[list[dict[str, Any]]]],
    publish: Callable[[dict[str, str]], None],
    *,
    shared_dir: Path | None,
    netns: str | None = None,
    interval: float = INTERVAL_S,
    announce: Announce | None = None,
    node: str = "",
) -> None:
    """Probe forever, every ``interval`` seconds, from the node's network namespace
    ``netns`` (None: the agent's own), publishing each answer (the Lease is written only
    when it changed); errors are logged and retried next round."""
    executor = netnsthreads.executor(netns) if netns is not None else None
    before: dict[str, str] | None = None
    try:
        while True:
            try:
                found = await reach_once(
                    list_backends, shared_dir=shared_dir, executor=executor,
                    before=before, announce=announce, node=node,
                )  # fmt: skip
                publish(found)
                before = found
            except Exception as exc:
                logger.warning("storage backend probing failed: %s", exc)
            await asyncio.sleep(interval)
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
