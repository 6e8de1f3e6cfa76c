"""Ending containerd shims that outlived their sandbox: bundle deleted, nothing left to serve.

containerd deletes a task's bundle when the task goes, and the task's shim exits
with it; rarely (seen around a containerd restart) the shim lives on, childless,
in a bundle directory that no longer exists, and containerd no longer lists it.
Such a shim serves nobody, so any daemon of the namespace may end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

SHIM_NAME: Final = "containerd-shim-runc-v2"
# Often enough that a leaked shim does not pile up; cheap (one pass over /proc).
SWEEP_INTERVAL: Final = 60.0


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


def orphaned_shims(namespace: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids of ``namespace``'s shims whose bundle directory is deleted and that have no child process."""
    found = []
    for entry, argv in command_lines(proc):
        if shim_sandbox(argv, namespace) is None:
            continue
        try:
            if not os.readlink(entry / "cwd").endswith(" (deleted)") or _has_children(entry):
                continue
        except OSError:  # exited meanwhile, or not ours to read
            continue
        found.append(int(entry.name))
    return found


def reap_orphaned_shims(namespace: str) -> int:
    """SIGKILL every orphaned shim of ``namespace``; return how many."""
    reaped = 0
    for pid in orphaned_shims(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            reaped += 1
            log.warning("ended containerd shim %d: its task and bundle are gone", pid)
    return reaped


async def reap_forever(namespace: str, interval: float = SWEEP_INTERVAL) -> None:
    """Reap orphaned shims every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(reap_orphaned_shims, namespace)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv[:-1] else ""


def _has_children(process: Path) -> bool:
    return any((task / "children").read_text().strip() for task in (process / "task").iterdir())
