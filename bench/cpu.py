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

Process accounting records CPU in hundredths of a second, each process's rounded down,
so a stretch of many short processes (runsc CLI calls, shims) loses part of theirs to the
rest. Where cgroup v1's cpuacct is there, classes can be measured exactly instead: a
cgroup that already holds what a class runs (every sandbox's cgroup is under
``/sandboxd``, whose usage includes its children's, removed ones too), or one made for
the stretch that some processes are moved into, with all they start meanwhile (containerd:
its shims and their runsc calls). The per-process classes are then a split, not the total.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


_CPUACCT: Final = Path("/sys/fs/cgroup/cpuacct")


def _cpuacct_usage(directory: Path) -> float:
    """CPU seconds a cgroup v1 cpuacct group and its descendants used (exact: nanoseconds)."""
    return int((directory / "cpuacct.usage").read_text()) / 1e9


def _cpuacct_group(pid: int) -> Path:
    """The cpuacct group a process is in."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return _CPUACCT / path.lstrip("/")
    raise OSError(f"process {pid} is in no cpuacct group")


class _ContainedClass:
    """Processes moved into a cpuacct group of their own for a stretch, with all they start meanwhile."""

    def __init__(self, name: str, pids: Sequence[int]) -> None:
        slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")[:40]
        self.directory = _CPUACCT / f"sandboxd-bench-{os.getpid()}-{slug}"
        self.pids = list(pids)
        self.origin = _cpuacct_group(self.pids[0]) if self.pids else _CPUACCT

    def __enter__(self) -> _ContainedClass:
        self.directory.mkdir()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                (self.directory / "cgroup.procs").write_text(str(pid))
        return self

    def usage(self) -> float:
        """CPU seconds of the class since it was contained."""
        return _cpuacct_usage(self.directory)

    def __exit__(self, *_: object) -> None:
        # Back where they came from, and what they started too (a shim forking a runsc call
        # as it is moved may need a second pass).
        for _attempt in range(50):
            remaining = (self.directory / "cgroup.procs").read_text().split()
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    (self.origin / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
            if not self.directory.exists():
                return
            time.sleep(0.1)
        raise OSError(f"{self.directory} still holds processes")


@attrs.frozen
class CpuBreakdown:
    """CPU seconds by class over the measured stretch, and the executions it did.

    ``split`` is the same stretch by process name from process accounting (approximate), where
    ``seconds`` has exact classes; otherwise it is empty and ``seconds`` is by process name.
    """

    seconds: Mapping[str, float]
    executions: int
    split: Mapping[str, float] = attrs.field(factory=dict)

    def per_execution_ms(self) -> dict[str, float]:
        """Milliseconds of CPU per execution, by class."""
        return {name: 1000 * value / self.executions for name, value in self.seconds.items()}

    def split_per_execution_ms(self) -> dict[str, float]:
        """Milliseconds of CPU per execution by process name, where the classes are exact."""
        return {name: 1000 * value / self.executions for name, value in self.split.items()}

    @property
    def total_ms(self) -> float:
        """All CPU per execution, in milliseconds."""
        return 1000 * sum(self.seconds.values()) / self.executions


class CpuMeter:
    """Measures one stretch; ``long_lived`` names the processes read from /proc (pid lists by class).

    With cgroup v1's cpuacct, ``contained`` classes are the processes moved into a cgroup of
    their own for the stretch and all they start, ``groups`` classes existing cgroups (paths
    relative to the hierarchy's root), both exact; the per-process classes become a split,
    where ``within`` names long-lived processes an exact class holds (read from /proc).
    """

    def __init__(
        self,
        long_lived: Mapping[str, Iterable[int]],
        *,
        contained: Mapping[str, Sequence[int]] | None = None,
        groups: Mapping[str, str] | None = None,
        within: Mapping[str, Iterable[int]] | None = None,
    ) -> None:
        self._long_lived = {name: list(pids) for name, pids in long_lived.items()}
        # Long-lived processes inside an exact class (containerd in its own): the split's only.
        self._within = {name: list(pids) for name, pids in (within or {}).items()}
        exact = _CPUACCT.is_dir() and not (_CPUACCT / "cgroup.controllers").exists()
        self._contained = dict(contained or {}) if exact else {}
        self._groups = (
            {name: _CPUACCT / path.lstrip("/") for name, path in (groups or {}).items()} if exact else {}
        )
        self.breakdown: CpuBreakdown | None = None

    def _group_usage(self) -> dict[str, float]:
        return {name: _cpuacct_usage(directory) for name, directory in self._groups.items()}

    def _sample(self) -> dict[str, float]:
        sample = {}
        for name, pids in {**self._long_lived, **self._within}.items():
            total = 0.0
            for pid in pids:
                try:
                    total += _process_cpu(pid)
                except OSError:
                    continue
            sample[name] = total
        return sample

    @contextlib.contextmanager
    def measuring(self, executions: int) -> Iterator[None]:
        """Count CPU while the block runs ``executions`` executions."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        with tempfile.TemporaryDirectory(prefix="sandboxd-bench-acct-") as directory:
            path = Path(directory) / "pacct"
            path.touch()
            if libc.acct(str(path).encode()) != 0:
                raise OSError(ctypes.get_errno(), "process accounting (acct) could not be turned on")
            try:
                with contextlib.ExitStack() as stack:
                    contained = {
                        name: stack.enter_context(_ContainedClass(name, pids))
                        for name, pids in self._contained.items()
                    }
                    before, edge_before, host_before = self._sample(), _classified(), _host_cpu()
                    groups_before = self._group_usage()
                    yield
                    after, edge_after, host_after = self._sample(), _classified(), _host_cpu()
                    groups_after = self._group_usage()
                    contained_seconds = {name: group.usage() for name, group in contained.items()}
            finally:
                libc.acct(None)
            by_process = window_cpu(edge_before, edge_after, exited_cpu(path.read_bytes()))
        long_lived = {name: after[name] - before[name] for name in self._long_lived}
        within = {name: after[name] - before[name] for name in self._within}
        exact = {name: groups_after[name] - groups_before[name] for name in self._groups}
        exact |= contained_seconds
        if exact:
            kernel = by_process.pop(KERNEL_THREADS, 0.0)
            seconds = {**exact, **long_lived, KERNEL_THREADS: kernel}
            split = {**by_process, **long_lived, **within}
        else:
            seconds, split = {**by_process, **long_lived}, {}
        seconds[UNATTRIBUTED] = max(host_after - host_before - sum(seconds.values()), 0.0)
        self.breakdown = CpuBreakdown(seconds=seconds, executions=executions, split=split)
