"""BIRD 2 as one VRF's routing daemon: its argv, its parser, its reload, its sessions.

One of the two daemon modules (`frr` is the other) behind the shared decisions of
`kubevisor.agent.vrfs.daemons`; `supervising.Supervisor` calls them through
`supervising.Driver`. BIRD is one process: ``bird -f`` with our config, its control
socket ``bird.ctl`` (by relative name: the run directory is its working directory, and a
Unix socket path has at most 107 bytes) and its pid file. It drops to the ``bird``
account (Debian's bird2 creates it), which keeps only the network capabilities, so a
config cannot read or write the node's files as root (``include``, ``log "<file>"``).

The pure functions (argv, parsing what BIRD prints) are table-tested; the few blocking
ones (``--version``, asking over ``birdc``) run in the supervisor's threads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kubevisor.agent.vrfs import daemons, processes, sessions

NAME: daemons.Daemon = "bird"
PROGRAM = "bird"
BIRDC = "birdc"
SOCKET = daemons.SOCKETS[NAME]
#: The account BIRD drops to; without it on the node the daemon runs as root.
USER = daemons.USERS[NAME]
#: How a failed reload is named in the condition.
RELOAD_TOOL = "birdc configure"


def _as(user: str | None) -> list[str]:
    return ["-u", user, "-g", user] if user is not None else []


def argv(f: daemons.Files, *, user: str | None = None, config: str = "") -> list[str]:
    """``bird`` in the foreground (the agent supervises it) with our config, socket and
    pid file, as ``user`` when given; run with ``cwd=f.run_dir``."""
    del config  # one process whatever the config says
    return [PROGRAM, "-f", *_as(user), "-c", str(f.config), "-s", SOCKET, "-P", str(f.pid_file)]


def validate_argv(path: Path, *, user: str | None = None) -> list[str]:
    """``bird -p`` (parse and exit) as ``user``, so an ``include`` reads only what that
    account may."""
    return [PROGRAM, "-p", *_as(user), "-c", str(path)]


def reload_argv(path: Path) -> list[str]:
    """``birdc configure "<path>"``: the running daemon loads ``path`` (run with ``cwd`` =
    the run directory)."""
    return [BIRDC, "-s", SOCKET, "configure", f'"{path}"']


def reloaded(output: str, returncode: int) -> bool:
    """Whether birdc's answer says the reload took: it prints ``Reconfigured``."""
    return returncode == 0 and ("Reconfigured" in output or "Reconfiguration" in output)


def is_ours(cmdline: list[str], f: daemons.Files) -> bool:
    """Whether a process's argv is this VRF's BIRD: ``bird`` with our config file."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).name == PROGRAM
        and "-c" in cmdline
        and str(f.config) in cmdline
    )


def processes_for(config: str) -> tuple[str, ...]:
    """The processes a config needs: BIRD is one, whatever the config."""
    del config
    return (PROGRAM,)


def parse_version(text: str) -> str | None:
    """``bird --version`` prints ``BIRD version 2.0.12``; the version, or None."""
    match = re.search(r"BIRD version (\S+)", text)
    return match.group(1) if match else None


def refusal_message(parser_output: str, candidate: Path) -> str:
    """``bird -p``'s message as a sentence about ``routing.config`` (its path replaced by
    the field name, its ``bird:`` prefix dropped)."""
    text = daemons.parser_lines(parser_output, candidate)
    said = re.sub(r"^bird: ", "", text) or "bird -p refused the config without saying why"
    return daemons.refusal("BIRD", said)


def installed() -> bool:
    """Whether bird and birdc are on PATH (blocking)."""
    return bool(shutil.which(PROGRAM) and shutil.which(BIRDC))


def version() -> str | None:
    """``bird --version`` (it prints to stderr); None when bird is missing (blocking)."""
    try:
        done = subprocess.run(
            [PROGRAM, "--version"],
            capture_output=True,
            text=True,
            timeout=processes.TOOL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(done.stdout + done.stderr)


def prepare(f: daemons.Files) -> None:
    """Nothing beyond the shared start files: BIRD needs only its config."""
    del f


def leftovers(f: daemons.Files) -> list[int]:
    """BIRD leaves no other process behind."""
    del f
    return []


def _ask(f: daemons.Files, *command: str) -> str | None:
    return processes.ask([BIRDC, "-s", SOCKET, *command], f.run_dir)


def read_sessions(f: daemons.Files, config: str = "") -> sessions.Summary | None:
    """The running BIRD's protocols (BGP sessions, OSPF adjacencies) and routes, asked
    over ``birdc`` (None when it does not answer; blocking)."""
    del config
    protocols = _ask(f, "show", "protocols", "all")
    if protocols is None:
        return None
    full = sessions.bird_ospf_full(_ask(f, "show", "ospf", "neighbors") or "")
    count = sessions.bird_route_count(_ask(f, "show", "route", "count") or "")
    return sessions.summarize(sessions.bird_protocols(protocols, full), count)
