"""When a guest is ready for users: the contract between a guest image, which says so
on its serial console, the agent, which reads the console log and reports the
VirtualMachine's ``GuestReady`` condition, and the controller, which binds a published-
application session to a server only once it holds (docs/remote-access.md "Guest
readiness").

The convention of kubevisor's guest images (hack/build-guest.sh, hack/build-appguest.sh):
each boot prints ``kubevisor-<image>: booted`` first and ``kubevisor-<image>: ready``
once it serves (the app guest: after its sshd listens on port 22). The serial log is
appended across restarts, so a guest is ready only when a ready line follows the last
booted line. Running is the domain's state; GuestReady is the guest's own word. Pure.
"""

from __future__ import annotations

import re
from typing import Final

#: Bytes of the end of the console log the agent reads (a boot's markers are in it).
TAIL_BYTES: Final = 64 * 1024
#: How long after a VM reached Running the agent keeps looking for the ready line
#: (seconds); a guest that never prints one (not a kubevisor image) is not read after.
WAIT_SECONDS: Final = 600.0
#: How often the agent looks while it waits (seconds).
RECHECK_SECONDS: Final = 2.0

_BOOTED = re.compile(r"kubevisor-[a-z0-9-]+: booted(?![\w-])")
_READY = re.compile(r"kubevisor-[a-z0-9-]+: ready(?![\w-])")


def ready_in(console: str) -> bool:
    """True when the console text shows a ready line after its last booted line (or a
    ready line and no booted line at all: the tail began after the boot's start)."""
    boots = list(_BOOTED.finditer(console))
    since = boots[-1].end() if boots else 0
    return _READY.search(console, since) is not None


def keep_looking(running_for: float | None) -> bool:
    """Whether the agent looks at the console again while the guest is not ready yet:
    for :data:`WAIT_SECONDS` after the VM reached Running (``running_for`` seconds ago;
    None: unknown, look)."""
    return running_for is None or running_for < WAIT_SECONDS
