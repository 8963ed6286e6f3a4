"""Files on an NFS export, through libnfs — the same user-space client QEMU opens the
disks with (Debian's ``qemu-block-extra`` links it), so what the agent sees is what QEMU
will see, from the same network namespace, with no kernel mount on the node.

``qemu-img`` makes the images (over ``nfs://``); this adapter does what qemu-img cannot:
ask whether a file is there, rename a finished image into place, delete one. Each call
opens its own short-lived context (init, MOUNT, the one operation, destroy): a handful of
calls per VM life, never a hot path.

Every function here blocks (libnfs' synchronous API): run it on a
:func:`kubevisor.agent.kernel.netnsthreads.executor` thread of the node's namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

#: Sonames tried in order (Debian 12 ships libnfs.so.13).
_SONAMES: Final = ("libnfs.so.13", "libnfs.so.14", "libnfs.so.16", "libnfs.so")
#: ``struct nfs_stat_64`` is 17 64-bit fields in libnfs 4/5; a larger buffer is harmless.
_STAT_BUFFER: Final = 512
#: Each RPC gives up after this long: an unreachable server is an answer, not a hang.
TIMEOUT_MS: Final = 10_000


class NFSError(OSError):
    """A libnfs call failed; ``str()`` is libnfs' own sentence (it becomes the VM's
    StorageFailed message)."""


@functools.cache
def _lib() -> ctypes.CDLL:
    for name in (*_SONAMES, ctypes.util.find_library("nfs")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.nfs_init_context.restype = ctypes.c_void_p
        lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
        lib.nfs_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_get_error.argtypes = [ctypes.c_void_p]
        lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.nfs_unlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        return lib
    raise NFSError(errno.ENOENT, "libnfs is not installed on this node (Debian: libnfs13)")


def _check(lib: ctypes.CDLL, ctx: int, rc: int, what: str) -> int:
    if rc < 0:
        detail = lib.nfs_get_error(ctx)
        text = detail.decode(errors="replace") if detail else f"error {rc}"
        raise NFSError(-rc, f"{what}: {text}")
    return rc


@contextmanager
def _mounted(server: str, export: str) -> Iterator[tuple[ctypes.CDLL, int]]:
    lib = _lib()
    ctx = lib.nfs_init_context()
    if not ctx:
        raise NFSError(errno.ENOMEM, "libnfs: cannot create a context")
    lib.nfs_set_timeout(ctx, TIMEOUT_MS)
    try:
        _check(lib, ctx, lib.nfs_mount(ctx, server.encode(), export.encode()),
               f"mount {server}:{export}")  # fmt: skip
        yield lib, ctx
    finally:
        lib.nfs_destroy_context(ctx)


def _call(server: str, export: str, op: Callable[[ctypes.CDLL, int], int], what: str) -> int:
    with _mounted(server, export) as (lib, ctx):
        return _check(lib, ctx, op(lib, ctx), what)


def exists(server: str, export: str, name: str) -> bool:
    """True when ``name`` (relative to the export's root) is there; a missing file is
    False, an unreachable server or a refused mount raises :class:`NFSError`."""
    buf = ctypes.create_string_buffer(_STAT_BUFFER)
    try:
        _call(server, export, lambda lib, ctx: lib.nfs_stat64(ctx, _rel(name), buf),
              f"stat {name}")  # fmt: skip
    except NFSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def rename(server: str, export: str, old: str, new: str) -> None:
    """Move ``old`` to ``new`` (both relative to the export's root), atomically on the
    server: an image appears only complete."""
    _call(server, export, lambda lib, ctx: lib.nfs_rename(ctx, _rel(old), _rel(new)),
          f"rename {old} to {new}")  # fmt: skip


def unlink(server: str, export: str, name: str) -> bool:
    """Delete ``name``; False when it was not there."""
    try:
        _call(server, export, lambda lib, ctx: lib.nfs_unlink(ctx, _rel(name)), f"unlink {name}")
    except NFSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _rel(name: str) -> bytes:
    return ("/" + name.lstrip("/")).encode()
