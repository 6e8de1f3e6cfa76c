"""Shims that outlived their task are found and ended; live shims and other processes are left alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.engine.orphans import (
    SHIM_NAME,
    TASKLESS_AGE,
    Listed,
    end_shims_of,
    orphaned_shims,
    reap_orphaned_shims,
)

NAMESPACE = "sandboxd-orphans-test"


def fake_process(proc: Path, pid: int, argv: list[str], cwd: str, children: str = "") -> None:
    """A /proc/<pid> entry with the files the finder reads."""
    entry = proc / str(pid)
    (entry / "task" / str(pid)).mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"\0".join(arg.encode() for arg in argv) + b"\0")
    (entry / "task" / str(pid) / "children").write_text(children)
    os.symlink(cwd, entry / "cwd")


@contextlib.contextmanager
def stand_in_shims(flags: list[list[str]], cwds: list[Path]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Pythons that wait, with a shim's argv of the namespace and ``flags``; killed afterwards."""
    processes = []
    try:
        for extra, cwd in zip(flags, cwds, strict=True):
            argv = [SHIM_NAME, "-c", "import time; time.sleep(60)", "-namespace", NAMESPACE, *extra]
            processes.append(subprocess.Popen(argv, executable=sys.executable, cwd=cwd))
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_finds_only_childless_shims_of_the_namespace_in_deleted_bundles(tmp_path: Path) -> None:
    """Of five processes, only the shim of this namespace whose bundle is gone and has no children counts."""
    shim = f"/usr/bin/{SHIM_NAME}"
    fake_process(tmp_path, 10, [shim, "-namespace", NAMESPACE, "-id", "a"], "/run/x/.a (deleted)")
    fake_process(tmp_path, 11, [shim, "-namespace", NAMESPACE, "-id", "b"], "/run/x/b")
    fake_process(tmp_path, 12, [shim, "-namespace", NAMESPACE, "-id", "c"], "/run/x/.c (deleted)", "99 ")
    fake_process(tmp_path, 13, [shim, "-namespace", "other", "-id", "d"], "/run/x/.d (deleted)")
    fake_process(tmp_path, 14, ["/bin/sleep", "-namespace", NAMESPACE], "/tmp/gone (deleted)")
    (tmp_path / "self").mkdir()
    assert orphaned_shims(NAMESPACE, tmp_path) == [10]


@pytest.mark.integration
def test_reaps_a_real_orphaned_shim(tmp_path: Path) -> None:
    """A live process that looks like a shim in a deleted bundle is killed; one in a live bundle is not."""
    for name in ("orphan", "live"):
        (tmp_path / name).mkdir()
    flags = [["-id", "orphan"], ["-id", "live"]]
    with stand_in_shims(flags, [tmp_path / "orphan", tmp_path / "live"]) as (orphan, live):
        (tmp_path / "orphan").rmdir()
        assert reap_orphaned_shims(NAMESPACE) == 1
        assert orphan.wait(5) == -signal.SIGKILL
        assert live.poll() is None


def test_a_taskless_shim_is_an_orphan_once_no_create_can_be_under_way(tmp_path: Path) -> None:
    """A childless shim of this containerd serving no task it lists counts only past TASKLESS_AGE."""
    shim = f"/usr/bin/{SHIM_NAME}"
    ticks = os.sysconf("SC_CLK_TCK")
    (tmp_path / "uptime").write_text("1000.00 1.00\n")
    ours, other = "/run/c/containerd.sock", "/run/other/containerd.sock"
    shims = [
        (20, "old", 100, "", ours),
        (21, "young", 990, "", ours),
        (22, "busy", 100, "7 ", ours),
        (23, "served", 100, "", ours),
        (24, "elsewhere", 100, "", other),
    ]
    for pid, name, started, children, address in shims:
        argv = [shim, "-namespace", NAMESPACE, "-id", name, "-address", address]
        fake_process(tmp_path, pid, argv, f"/run/x/{name}", children)
        fields = ["S", *["0"] * 18, str(started * ticks)]  # field 22 (starttime) is the 20th after ")"
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (containerd-shim) {' '.join(fields)} 0 0\n")
        os.symlink("/", tmp_path / str(pid) / "root")
    assert orphaned_shims(NAMESPACE, tmp_path) == []  # without containerd's list: only deleted bundles
    assert orphaned_shims(NAMESPACE, tmp_path, listed=Listed(ours, {"served"})) == [20]
    assert TASKLESS_AGE < 1000 - 100


@pytest.mark.integration
def test_the_shims_of_a_stopped_containerd_are_ended(tmp_path: Path) -> None:
    """Every shim told the stopped containerd's address is killed; a shim of another containerd is not."""
    flags = [["-address", "/run/stopped/containerd.sock"], ["-address", "/run/serving/containerd.sock"]]
    with stand_in_shims(flags, [tmp_path, tmp_path]) as (stopped, serving):
        assert end_shims_of("/run/stopped/containerd.sock") == 1
        assert stopped.wait(5) == -signal.SIGKILL
        assert serving.poll() is None
