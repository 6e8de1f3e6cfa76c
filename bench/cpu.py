"""CPU by process class over a stretch of a benchmark: what each part of a sandbox's life costs.

Long-lived processes (the daemon, containerd, the benchmark's own client) are read
from /proc before and after. Everything that exits meanwhile (each sandbox's gVisor
processes, runsc CLI calls, shims) is counted by the kernel's process accounting,
which writes a record with a process's CPU time when it exits. So that the stretch
gets exactly its own part of a process that lives across one of its edges (a pool
sandbox booted before it and used in it, one booting as it ends), every process of
those classes is also read from /proc at both edges: what one had used at the start
is taken off its record, and what one alive at the end used meanwhile is added.
Kernel threads (kworkers, the journal, RCU) are read the same way; what no process
accounts for (interrupts) is the rest of the host's total in /proc/stat. The machine
should run nothing else meanwhile.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import attrs

_TICK: Final = os.sysconf("SC_CLK_TCK")
# struct acct_v3 (linux/acct.h): 64 bytes a record; times are comp_t in AHZ (100 a second) ticks.
_RECORD: Final = struct.Struct("<BBHIIIIIIfHHHHHHHH16s")
_AHZ: Final = 100
# What a process's command name (comm) says it is. gVisor's sentry, gofer and ptrace stubs
# re-execute runsc as /proc/self/exe, so all three are "exe".
_CLASSES: Final = {
    "exe": "gVisor sandbox (sentry, gofer, stubs)",
    "runsc": "runsc CLI calls",
    "containerd-shim": "containerd shims",
}
OTHER_EXITED: Final = "other short-lived processes"
KERNEL_THREADS: Final = "kernel threads (kworkers, journal, RCU)"
UNATTRIBUTED: Final = "kernel, not in any process"
# kthreadd, the parent of every kernel thread.
_KTHREADD: Final = 2


def _comp(value: int) -> int:
    """A comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (((value >> 13) & 0x7) * 3)


def exited_cpu(records: bytes) -> dict[int, tuple[str, float]]:
    """Class and CPU seconds of each process in the accounting records, by process id."""
    exited = {}
    for offset in range(0, len(records) - _RECORD.size + 1, _RECORD.size):
        fields = _RECORD.unpack_from(records, offset)
        pid, utime, stime, comm = fields[6], fields[10], fields[11], fields[-1]
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        exited[pid] = (_CLASSES.get(name, OTHER_EXITED), (_comp(utime) + _comp(stime)) / _AHZ)
    return exited


def _stat(pid: int) -> tuple[str, int, float]:
    """A live process's command name, parent and user plus system CPU seconds (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _process_cpu(pid: int) -> float:
    """User plus system CPU seconds of a live process, all its threads included."""
    return _stat(pid)[2]


def _classified() -> dict[int, tuple[str, float]]:
    """Class and CPU seconds so far of every live process of a counted class, and of kernel threads."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, parent, cpu = _stat(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if parent == _KTHREADD:
            found[int(entry.name)] = (KERNEL_THREADS, cpu)
        elif comm in _CLASSES:
            found[int(entry.name)] = (_CLASSES[comm], cpu)
    return found


def window_cpu(
    start: Mapping[int, tuple[str, float]],
    end: Mapping[int, tuple[str, float]],
    exited: Mapping[int, tuple[str, float]],
) -> dict[str, float]:
    """CPU seconds by class within a stretch, from the processes at both edges and those that exited."""
    totals: dict[str, float] = collections.defaultdict(float)
    for pid, (name, cpu) in exited.items():
        totals[name] += cpu - (start[pid][1] if pid in start and pid not in end else 0.0)
    for pid, (name, cpu) in end.items():
        if pid not in exited:
            totals[name] += cpu - (start[pid][1] if pid in start else 0.0)
    return dict(totals)


def _host_cpu() -> float:
    """CPU seconds the host spent busy (not idle, not waiting for I/O) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def pids_named(comm: str) -> list[int]:
    """Live processes whose command name is ``comm``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@attrs.frozen
class CpuBreakdown:
    """CPU seconds by class over the measured stretch, and the executions it did."""

    seconds: Mapping[str, float]
    executions: int

    def per_execution_ms(self) -> dict[str, float]:
        """Milliseconds of CPU per execution, by class."""
        return {name: 1000 * value / self.executions for name, value in self.seconds.items()}

    @property
    def total_ms(self) -> float:
        """All CPU per execution, in milliseconds."""
        return 1000 * sum(self.seconds.values()) / self.executions


class CpuMeter:
    """Measures one stretch; ``long_lived`` names the processes read from /proc (pid lists by class)."""

    def __init__(self, long_lived: Mapping[str, Iterable[int]]) -> None:
        self._long_lived = {name: list(pids) for name, pids in long_lived.items()}
        self.breakdown: CpuBreakdown | None = None

    def _sample(self) -> dict[str, float]:
        sample = {}
        for name, pids in self._long_lived.items():
            total = 0.0
            for pid in pids:
                try:
                    total += _process_cpu(pid)
                except OSError:
                    continue
            sample[name] = total
        return sample

    @contextmanager
    def measuring(self, executions: int) -> Iterator[None]:
        """Count CPU while the block runs ``executions`` executions."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        with tempfile.TemporaryDirectory(prefix="sandboxd-bench-acct-") as directory:
            path = Path(directory) / "pacct"
            path.touch()
            if libc.acct(str(path).encode()) != 0:
                raise OSError(ctypes.get_errno(), "process accounting (acct) could not be turned on")
            try:
                before, edge_before, host_before = self._sample(), _classified(), _host_cpu()
                yield
                after, edge_after, host_after = self._sample(), _classified(), _host_cpu()
            finally:
                libc.acct(None)
            seconds = window_cpu(edge_before, edge_after, exited_cpu(path.read_bytes()))
        for name in self._long_lived:
            seconds[name] = after[name] - before[name]
        seconds[UNATTRIBUTED] = max(host_after - host_before - sum(seconds.values()), 0.0)
        self.breakdown = CpuBreakdown(seconds=seconds, executions=executions)
