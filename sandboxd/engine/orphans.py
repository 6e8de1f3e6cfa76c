"""Ending containerd shims that outlived their sandbox: nothing left to serve.

containerd deletes a task's bundle when the task goes, and the task's shim exits
with it; rarely (seen around a containerd restart) the shim lives on, childless,
in a bundle directory that no longer exists, and containerd no longer lists it.
And a daemon killed while containerd created a task can leave that task's shim
running, childless, in its bundle, with no task in containerd at all. Either
serves nobody, so any daemon of the namespace may end it: the second kind only
once it is old enough that no create can still be under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import Final

import attrs

from sandboxd.containerd import ContainerdClient

log = logging.getLogger(__name__)

SHIM_NAME: Final = "containerd-shim-runc-v2"
# Often enough that a leaked shim does not pile up; cheap (one pass over /proc).
SWEEP_INTERVAL: Final = 60.0
# A shim without a task is an orphan only past this age: a task create takes seconds at most.
TASKLESS_AGE: Final = 60.0


def command_lines(proc: Path = Path("/proc")) -> Iterator[tuple[Path, list[str]]]:
    """Each process's /proc entry and argv; a process that exits meanwhile is left out."""
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                yield entry, (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue


def shim_sandbox(argv: list[str], namespace: str) -> str | None:
    """The sandbox id a runc shim of ``namespace`` with this argv serves; None for any other process."""
    if not argv[0].endswith(SHIM_NAME) or _flag(argv, "-namespace") != namespace:
        return None
    return _flag(argv, "-id")


@attrs.frozen
class Listed:
    """What one containerd lists: its socket (as its shims are told it) and the ids of its tasks."""

    address: str
    tasks: Collection[str]


async def listed_by(client: ContainerdClient) -> Listed:
    """What ``client``'s containerd lists now: its address and its tasks in the namespace."""
    return Listed(client.address, {task.container_id for task in await client.tasks.list()})


def orphaned_shims(namespace: str, proc: Path = Path("/proc"), *, listed: Listed | None = None) -> list[int]:
    """Pids of ``namespace``'s childless shims that serve nothing.

    That is, whose bundle is deleted, or (given what their containerd ``listed``) that serve
    no task and are older than ``TASKLESS_AGE``. Only shims of that containerd (its address,
    and this process's root directory: not another host's in a container) are judged so.
    """
    found = []
    for entry, argv in command_lines(proc):
        sandbox = shim_sandbox(argv, namespace)
        if sandbox is None:
            continue
        try:
            if _has_children(entry):
                continue
            taskless = (
                listed is not None
                and _flag(argv, "-address") == listed.address
                and sandbox not in listed.tasks
                and _same_root(entry)
                and _age(entry, proc) >= TASKLESS_AGE
            )
            if not taskless and not os.readlink(entry / "cwd").endswith(" (deleted)"):
                continue
        except OSError:  # exited meanwhile, or not ours to read
            continue
        found.append(int(entry.name))
    return found


def reap_orphaned_shims(namespace: str, listed: Listed | None = None) -> int:
    """SIGKILL every orphaned shim of ``namespace`` (``listed``: what containerd lists); return how many."""
    reaped = 0
    for pid in orphaned_shims(namespace, listed=listed):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            reaped += 1
            log.warning("ended containerd shim %d: it serves no task any more", pid)
    return reaped


def end_shims_of(address: str, proc: Path = Path("/proc")) -> int:
    """SIGKILL every shim of the containerd at ``address``, stopped for good; return how many.

    Once that containerd is gone for good (``scripts/dev`` stopping the one it started) its
    shims serve nobody: one that a daemon killed while containerd created its task left
    would outlive the command otherwise.
    """
    ended = 0
    for entry, argv in command_lines(proc):
        if not argv[0].endswith(SHIM_NAME) or _flag(argv, "-address") != address:
            continue
        with contextlib.suppress(OSError):
            if _same_root(entry):
                os.kill(int(entry.name), signal.SIGKILL)
                ended += 1
    return ended


async def reap_forever(
    namespace: str,
    interval: float = SWEEP_INTERVAL,
    listing: Callable[[], Awaitable[Listed | None]] | None = None,
) -> None:
    """Reap orphaned shims every ``interval`` seconds until cancelled; ``listing`` asks containerd."""
    while True:
        await asyncio.sleep(interval)
        listed = await listing() if listing is not None else None
        await asyncio.to_thread(reap_orphaned_shims, namespace, listed)


def _same_root(process: Path) -> bool:
    """Whether the process sees the same root directory as this one."""
    theirs, ours = os.stat(process / "root"), os.stat("/")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _age(process: Path, proc: Path) -> float:
    """Seconds since the process started."""
    started = int((process / "stat").read_text().rsplit(")", 1)[1].split()[19])
    return float((proc / "uptime").read_text().split()[0]) - started / os.sysconf("SC_CLK_TCK")


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv[:-1] else ""


def _has_children(process: Path) -> bool:
    return any((task / "children").read_text().strip() for task in (process / "task").iterdir())
