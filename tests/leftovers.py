"""What sandboxd daemons left behind: containers, tasks, snapshots, leases, mounts, state entries, processes.

The tests' leftover checks and bench/soak.py count with this; neither needs pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from sandboxd.containerd import ContainerdClient
from sandboxd.engine.orphans import command_lines, shim_sandbox
from sandboxd.engine.sandbox import HOST_LABEL, MANAGED_LABEL, host_id_for


@attrs.frozen
class Leftovers:
    """Everything of sandboxd's that should be gone once no execution runs."""

    containers: list[str]
    tasks: list[str]
    snapshots: list[str]
    leases: list[str]
    mounts: list[str]
    state_entries: list[str]
    processes: list[str]

    def is_empty(self) -> bool:
        """True when nothing is left."""
        return not any(attrs.astuple(self))


async def find_leftovers(
    client: ContainerdClient, states: Sequence[Path], keep: Callable[[], set[str]] = set
) -> Leftovers:
    """List the containers, tasks, snapshots, leases, mounts, workspaces and FIFOs of some daemons.

    The daemons are those whose state directories are ``states``: only sandboxes labelled
    by one of them count (another daemon serving from the same containerd at the same
    time is none of their business); nor do the sandboxes ``keep`` names, asked before
    and after looking (a pool may start a boot meanwhile).
    """
    kept = keep()
    found = await _find_all(client, states)
    kept |= keep()
    return Leftovers(
        containers=[name for name in found.containers if name not in kept],
        tasks=[name for name in found.tasks if name not in kept],
        snapshots=[name for name in found.snapshots if name not in kept],
        leases=[name for name in found.leases if name not in kept],
        mounts=[path for path in found.mounts if Path(path).name not in kept],
        state_entries=[path for path in found.state_entries if Path(path).name not in kept],
        processes=[entry for entry in found.processes if entry.split()[1] not in kept],
    )


def _under(path: str, states: Sequence[Path]) -> bool:
    """True when ``path`` lies inside one of ``states`` (not merely starting with the same letters)."""
    return any(path.startswith(f"{state}/") for state in states)


async def _find_all(client: ContainerdClient, states: Sequence[Path]) -> Leftovers:
    hosts = {host_id_for(path) for path in states}
    managed = f'labels."{MANAGED_LABEL}"'
    containers = [c for c in await client.containers.list([managed]) if c.labels.get(HOST_LABEL) in hosts]
    snapshots = [s for s in await client.snapshots.list([managed]) if s.labels.get(HOST_LABEL) in hosts]
    leases = [lease for lease in await client.leases.list([managed]) if lease.labels.get(HOST_LABEL) in hosts]
    ours = {c.id for c in containers} | {s.name for s in snapshots} | {lease.id for lease in leases}
    mounts_table = await asyncio.to_thread(Path("/proc/self/mounts").read_text)
    mounts = [line.split()[1] for line in mounts_table.splitlines()]
    entries = [
        str(p)
        for state in states
        for directory in (state / "workspaces", state / "fifos")
        if directory.exists()
        for p in directory.iterdir()
    ]
    tasks = await client.tasks.list()
    return Leftovers(
        containers=[c.id for c in containers],
        tasks=[t.container_id for t in tasks if t.container_id in ours],
        snapshots=[s.name for s in snapshots],
        leases=[lease.id for lease in leases],
        mounts=[m for m in mounts if _under(m, states)],
        state_entries=entries,
        processes=await _orphaned_processes(client.namespace, states, {t.container_id for t in tasks}),
    )


# A shim exits a moment after containerd deleted its task: what outlives this was left behind.
SHIM_EXIT_GRACE = 3.0


async def _orphaned_processes(namespace: str, states: Sequence[Path], live: set[str]) -> list[str]:
    """Shims and runsc processes of the daemons serving no task containerd knows.

    containerd forgets a sandbox whose shim it lost track of, so its own listing
    cannot show such a leak; the host's process table does.
    """
    deadline = asyncio.get_running_loop().time() + SHIM_EXIT_GRACE
    while True:
        found = await asyncio.to_thread(_runtime_processes, namespace, states)
        orphans = [f"{kind} {sandbox} (pid {pid})" for pid, kind, sandbox in found if sandbox not in live]
        if not orphans or asyncio.get_running_loop().time() > deadline:
            return orphans
        await asyncio.sleep(0.2)


def _runtime_processes(namespace: str, states: Sequence[Path]) -> list[tuple[int, str, str]]:
    """(pid, "shim" or "runsc", sandbox id) of each runtime process that serves one of the daemons' sandboxes.

    Other daemons of the namespace on the same containerd (other test runs, a dev
    daemon) have shims too: a shim is one of these daemons' while it holds open a
    FIFO of theirs, its sandbox's stdio. One that holds none serves no program;
    every daemon reaps such shims, whoever's they were.
    """
    runsc_roots = tuple(f"--root={state}/runsc/" for state in states)
    fifo_dirs = tuple(f"{state}/fifos/" for state in states)
    found = []
    for entry, argv in command_lines():
        if (sandbox := shim_sandbox(argv, namespace)) is not None:
            if _holds_open(entry, fifo_dirs):
                found.append((int(entry.name), "shim", sandbox))
        elif argv[0].startswith("runsc") and any(arg.startswith(runsc_roots) for arg in argv):
            found.append((int(entry.name), "runsc", _runsc_container(argv)))
    return found


def _holds_open(process: Path, directories: tuple[str, ...]) -> bool:
    """True when the process (its /proc entry) has a file open inside one of ``directories``."""
    try:
        fds = list((process / "fd").iterdir())
    except OSError:  # it exited meanwhile
        return False
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd).startswith(directories):
                return True
    return False


def _runsc_container(argv: list[str]) -> str:
    """The container a runsc process serves: its log file sits in the task's bundle, named by the id."""
    for arg in argv:
        if arg.startswith("--log=") and arg.endswith("/log.json"):
            return Path(arg.removeprefix("--log=")).parent.name
    return argv[-1]
