"""Reading a sandbox's resource usage from the host's cgroup files (written by runsc, not the sandbox)."""

from __future__ import annotations

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
