"""A sandbox's cgroups on the host: their usage (written by runsc, not the sandbox), and their removal."""

from __future__ import annotations

import errno
from pathlib import Path

import attrs


@attrs.frozen
class CgroupUsage:
    """Usage of one sandbox's cgroup; None where the host does not report it."""

    oom_kills: int | None
    peak_memory_bytes: int | None
    cpu_time_ns: int | None
    memory_bytes: int | None = None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_keyed(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def read_usage(root: Path, cgroups_path: str) -> CgroupUsage:
    """Read a cgroup's OOM kills, peak and current memory and CPU time (cgroup v1 or v2)."""
    relative = cgroups_path.lstrip("/")
    if (root / "cgroup.controllers").exists():  # unified hierarchy (v2)
        group = root / relative
        usec = _read_keyed(group / "cpu.stat", "usage_usec")
        return CgroupUsage(
            oom_kills=_read_keyed(group / "memory.events", "oom_kill"),
            peak_memory_bytes=_read_int(group / "memory.peak"),
            cpu_time_ns=None if usec is None else usec * 1000,
            memory_bytes=_read_int(group / "memory.current"),
        )
    return CgroupUsage(
        oom_kills=_read_keyed(root / "memory" / relative / "memory.oom_control", "oom_kill"),
        peak_memory_bytes=_read_int(root / "memory" / relative / "memory.max_usage_in_bytes"),
        cpu_time_ns=_read_int(root / "cpuacct" / relative / "cpuacct.usage"),
        memory_bytes=_read_int(root / "memory" / relative / "memory.usage_in_bytes"),
    )


def cgroup_directories(root: Path, cgroups_path: str) -> list[Path]:
    """The directories of a cgroup in every hierarchy mounted under ``root`` (one on cgroup v2)."""
    relative = cgroups_path.lstrip("/")
    if (root / "cgroup.controllers").exists():
        return [root / relative]
    try:
        hierarchies = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink())
    except OSError:
        return []
    return [hierarchy / relative for hierarchy in hierarchies]


def remove_cgroup(root: Path, cgroups_path: str) -> list[Path]:
    """Remove a sandbox's cgroup in every hierarchy where it is left; return those still busy.

    runsc removes the cgroups it made when its container is deleted, but not when creating
    it failed half-way. An empty cgroup goes; one that still holds a process stays (the
    kernel refuses), and is returned.
    """
    busy = []
    for directory in cgroup_directories(root, cgroups_path):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            busy.append(directory)
    return busy
