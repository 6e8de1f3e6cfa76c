"""OCI runtime specs for sandboxes.

A sandbox's init process is the agent (sandboxd.engine.agent), which starts the
program (and its compile step) inside the sandbox, so one sandbox runs both
steps under the same limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import attrs

NOBODY: Final = 65534
WORKSPACE: Final = "/workspace"
# The agent's host directory is mounted read-only here: /dev is a tmpfs gVisor
# makes for every sandbox, so the mount point needs nothing from the image.
AGENT_DIR: Final = "/dev/.sandboxd"
# Only what the agent needs to start a process as NOBODY, drop every capability in it,
# and end every process of the sandbox once the execution is over.
_AGENT_CAPABILITIES: Final = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL")
_CPU_PERIOD_US: Final = 100_000


@attrs.frozen
class SandboxLimits:
    """Resource limits of one sandbox; they bound every process in it together."""

    memory_bytes: int
    pids: int
    cpus: float
    tmp_bytes: int
    file_size_bytes: int
    open_files: int


def host_pids_limit(limits: SandboxLimits) -> int:
    """The host cgroup's pids limit: a backstop far above the sandbox's own process limit.

    Processes inside the sandbox are limited by RLIMIT_NPROC, which gVisor enforces
    (fork and clone fail with EAGAIN). The host cgroup also counts gVisor's own
    threads, several per sandboxed task; at the same number, a fork bomb made the
    sentry itself fail and the whole sandbox die instead of the fork failing.
    """
    return limits.pids * 16 + 256


def user_process_limit(limits: SandboxLimits) -> int:
    """RLIMIT_NPROC for the sandbox user, so that the sandbox holds at most ``pids`` processes.

    The agent (uid 0) is one process outside the user's count, and gVisor (runsc
    20221219) lets a user reach one process beyond RLIMIT_NPROC: two fewer.
    """
    return max(limits.pids - 2, 1)


def _rlimits(limits: SandboxLimits) -> list[dict[str, Any]]:
    return [
        {"type": "RLIMIT_NOFILE", "hard": limits.open_files, "soft": limits.open_files},
        {"type": "RLIMIT_FSIZE", "hard": limits.file_size_bytes, "soft": limits.file_size_bytes},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
        {"type": "RLIMIT_NPROC", "hard": user_process_limit(limits), "soft": user_process_limit(limits)},
    ]


def agent_process_spec(agent: str, limits: SandboxLimits) -> dict[str, Any]:
    """The init process: the agent as root inside the sandbox, with four capabilities and no gain."""
    capabilities = list(_AGENT_CAPABILITIES)
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": [agent],
        "env": [],
        "cwd": "/",
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": _rlimits(limits),
        "noNewPrivileges": True,
    }


def sandbox_spec(
    *,
    hostname: str,
    workspace: Path,
    agent_dir: Path,
    agent_name: str,
    limits: SandboxLimits,
    cgroups_path: str,
    root: Path,
) -> dict[str, Any]:
    """The OCI runtime spec of a sandbox: read-only root, writable /workspace and /tmp, no network."""
    tmpfs_options = ["nosuid", "nodev", "mode=1777", f"size={limits.tmp_bytes}"]
    return {
        "ociVersion": "1.0.2",
        "process": agent_process_spec(f"{AGENT_DIR}/{agent_name}", limits),
        # The image's root as the host mounted it once, for all of its sandboxes (engine/roots.py).
        "root": {"path": str(root), "readonly": True},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmpfs_options},
            {"destination": "/var/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmpfs_options},
            {"destination": WORKSPACE, "type": "bind", "source": str(workspace), "options": ["rbind", "rw", "nosuid", "nodev"]},
            {"destination": AGENT_DIR, "type": "bind", "source": str(agent_dir), "options": ["rbind", "ro", "nosuid", "nodev"]},
        ],
        "linux": {
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": limits.memory_bytes, "swap": limits.memory_bytes},
                "cpu": {"quota": int(limits.cpus * _CPU_PERIOD_US), "period": _CPU_PERIOD_US},
                "pids": {"limit": host_pids_limit(limits)},
            },
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }  # fmt: skip
