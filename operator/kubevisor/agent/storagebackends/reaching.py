"""Which StorageBackends this node reaches, published in its Lease (``nodes.Capacity
.storage_backends``) for placement and the migration preconditions.

Reaching means: ``local`` always (the node's own disk directory); ``shared`` when the
node has a shared directory; ``nfs`` / ``iscsi`` when a TCP connection to the server's
NFS port (2049) or the target's portal opens from the node's network (``--netns``, where
the node's libvirtd and QEMU are) within a few seconds — the path QEMU's own clients
(libnfs, libiscsi) take. A login or a CHAP refusal is not seen here: it is the VM's
condition when its disk is opened.

:func:`probes` and :func:`reached` are pure (table-tested); :func:`probe` and :func:`run`
are the thin adapter (asyncio connect, never blocking the loop).
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


async def reach_once(
    list_backends: Callable[[], Awaitable[list[dict[str, Any]]]],
    *,
    shared_dir: Path | None,
    executor: Executor | None = None,
) -> dict[str, str]:
    """List the backends and probe them all at once."""
    todo = probes(await list_backends(), shared_dir=shared_dir)
    results = await asyncio.gather(*(probe(p, executor) for p in todo))
    return reached(zip(todo, results, strict=True))


async def run(
    list_backends: Callable[[], Awaitable[list[dict[str, Any]]]],
    publish: Callable[[dict[str, str]], None],
    *,
    shared_dir: Path | None,
    netns: str | None = None,
    interval: float = INTERVAL_S,
) -> None:
    """Probe forever, every ``interval`` seconds, from the node's network namespace
    ``netns`` (None: the agent's own), publishing each answer (the Lease is written only
    when it changed); errors are logged and retried next round."""
    executor = netnsthreads.executor(netns) if netns is not None else None
    try:
        while True:
            try:
                found = await reach_once(list_backends, shared_dir=shared_dir, executor=executor)
                publish(found)
            except Exception as exc:
                logger.warning("storage backend probing failed: %s", exc)
            await asyncio.sleep(interval)
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
