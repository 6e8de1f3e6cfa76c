"""Every execution leaves nothing behind: success, failure, timeout, cancellation, failed start."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient, ContainerdError, Mount
from sandboxd.engine.cgroups import cgroup_directories
from sandboxd.engine.engine import Engine
from sandboxd.engine.oci import SandboxLimits
from sandboxd.engine.sandbox import MANAGED_LABEL, SANDBOX_LABEL, Sandbox
from sandboxd.models import ExecutionStatus
from tests.helpers import Client, assert_nothing_left, engine_of, engine_run, images_of, wait_started

pytestmark = pytest.mark.integration


async def boot_small_python_sandbox(engine: Engine) -> Sandbox:
    """Boot a sandbox of the python image directly, outside any execution."""
    state = images_of(engine)["python"]
    assert state.chain_id is not None
    limits = SandboxLimits(
        memory_bytes=128 << 20, pids=32, cpus=1, tmp_bytes=1 << 20, file_size_bytes=1 << 20, open_files=64
    )
    return await Sandbox.create(
        engine.host,
        str(uuid.uuid4()),
        image=state.reference,
        root=await engine.root_for(state.chain_id),
        limits=limits,
        workspace_bytes=1 << 20,
        labels={},
        cleanups=engine.cleanups,
    )


@pytest.mark.parametrize(
    ("language", "code", "timeout", "status"),
    [
        ("python", "print('ok')", None, ExecutionStatus.COMPLETED),
        ("python", "import sys; sys.exit(4)", None, ExecutionStatus.COMPLETED),
        ("python", "while True: pass", 1, ExecutionStatus.TIMEOUT),
        ("go", "package main\nfunc main() { nope }", None, ExecutionStatus.COMPILE_ERROR),
        ("python", "print('z' * (4 << 20))", None, ExecutionStatus.OUTPUT_LIMIT),
        ("python", "import os\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(60)", None,
         ExecutionStatus.COMPLETED),
    ],
)  # fmt: skip
async def test_each_ending_cleans_up(
    engine: Engine,
    containerd: ContainerdClient,
    config: Config,
    language: str,
    code: str,
    timeout: int | None,
    status: ExecutionStatus,
) -> None:
    """Whatever way an execution ends, its sandbox and everything around it are gone afterwards."""
    result = await engine_run(engine, language, code, timeout=timeout)
    assert result.status == status
    await assert_nothing_left(engine, containerd, config)


async def test_cancelled_execution_cleans_up(
    engine: Engine, containerd: ContainerdClient, config: Config
) -> None:
    """An execution cancelled while its program runs is torn down completely."""
    code = "import time; open('/workspace/cancel-me', 'w').close(); time.sleep(30)"
    running = asyncio.ensure_future(engine_run(engine, "python", code))
    (sandbox,) = await wait_started(config.paths.state, "cancel-me")  # the program sleeps now
    assert sandbox in {task.container_id for task in await containerd.tasks.list()}
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await assert_nothing_left(engine, containerd, config)
    assert sandbox not in {container.id for container in await containerd.containers.list()}


async def test_task_left_in_created_state_is_removed(
    engine: Engine,
    containerd: ContainerdClient,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sandbox whose start fails (task stuck in CREATED, which runsc will not signal) is still removed."""

    async def failing_start(container_id: str) -> int:
        raise ContainerdError("Start", "injected failure before the init process started")

    monkeypatch.setattr(engine.host.client.tasks, "start", failing_start)
    caplog.set_level(logging.INFO, logger="sandboxd.engine.sandbox")
    with pytest.raises(ContainerdError, match="injected"):
        await boot_small_python_sandbox(engine)
    monkeypatch.undo()
    assert "forcing deletion of a CREATED task" in caplog.text
    await assert_nothing_left(engine, containerd, config)


async def test_boot_cancelled_as_containerd_answers_leaves_nothing(
    engine: Engine, containerd: ContainerdClient, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A boot cancelled after containerd created its task, before its answer came, is still removed whole."""
    tasks = engine.host.client.tasks
    real_create = tasks.create
    created, answer = asyncio.Event(), asyncio.Event()

    async def slow_answer(
        container_id: str, *, rootfs: Sequence[Mount], stdin: str = "", stdout: str = "", stderr: str = ""
    ) -> int:
        pid = await real_create(container_id, rootfs=rootfs, stdin=stdin, stdout=stdout, stderr=stderr)
        created.set()
        await answer.wait()  # where a cancellation of the RPC would land
        return pid

    monkeypatch.setattr(tasks, "create", slow_answer)
    boot = asyncio.ensure_future(boot_small_python_sandbox(engine))
    await created.wait()
    boot.cancel()
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await boot
    monkeypatch.undo()
    await assert_nothing_left(engine, containerd, config)


async def test_sandboxes_share_their_images_read_only_root(
    engine: Engine, containerd: ContainerdClient, config: Config
) -> None:
    """A sandbox has no snapshot or lease of its own: its root is its image's, mounted read-only once."""
    code = "import time; open('/workspace/shared', 'w').close(); time.sleep(3)"
    running = asyncio.ensure_future(engine_run(engine, "python", code))
    try:
        (sandbox,) = await wait_started(config.paths.state, "shared")
        managed = [f'labels."{MANAGED_LABEL}"']
        snapshots = await containerd.snapshots.list(managed)
        leases = await containerd.leases.list(managed)
        assert not [s for s in snapshots if s.labels.get(SANDBOX_LABEL) == sandbox]
        assert not [lease for lease in leases if lease.labels.get(SANDBOX_LABEL) == sandbox]
        chain_id = images_of(engine)["python"].chain_id
        assert chain_id is not None
        root = await engine.root_for(chain_id)
        table = Path("/proc/self/mounts").read_text().splitlines()
        options = {line.split()[1]: line.split()[3].split(",") for line in table}
        assert options[str(root)][0] == "ro"
        assert root.name in engine.shared_root_keys()
    finally:
        result = await running
    assert result.status == ExecutionStatus.COMPLETED


async def test_a_daemon_that_stops_leaves_none_of_its_sandboxes(
    make_server: Callable[..., Awaitable[Client]], containerd: ContainerdClient
) -> None:
    """A sandbox whose removal failed while the daemon ran (containerd away) is removed when it stops."""
    http = await make_server()
    engine = engine_of(http.app)
    sandbox = await boot_small_python_sandbox(engine)  # never destroyed, as when its removal failed
    assert sandbox.id in {container.id for container in await containerd.containers.list()}
    await http.close()
    assert sandbox.id not in {container.id for container in await containerd.containers.list()}
    assert sandbox.id not in {task.container_id for task in await containerd.tasks.list()}


def cgroups_of(engine: Engine, sandbox: Sandbox) -> list[Path]:
    """The sandbox's cgroup directories that exist now, in every hierarchy."""
    return [d for d in cgroup_directories(engine.host.cgroup_root, sandbox.cgroups_path) if d.exists()]


async def test_a_sandbox_leaves_no_cgroup(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox's cgroups go with it, also when runsc made them and then failed to create the sandbox."""
    sandbox = await boot_small_python_sandbox(engine)
    assert cgroups_of(engine, sandbox), "runsc made no cgroup for the sandbox"
    await sandbox.destroy()
    assert cgroups_of(engine, sandbox) == []

    made: list[Sandbox] = []

    async def failing_create(container_id: str, **_: Any) -> int:
        # As runsc does when its gofer cannot start: the cgroups are made, the sandbox is not.
        failed = Sandbox(engine.host, container_id)
        for directory in cgroup_directories(engine.host.cgroup_root, failed.cgroups_path):
            if directory.parent.is_dir():
                directory.mkdir(exist_ok=True)
        made.append(failed)
        raise ContainerdError("Create", "injected failure: cannot create gofer process")

    monkeypatch.setattr(engine.host.client.tasks, "create", failing_create)
    with pytest.raises(ContainerdError, match="injected"):
        await boot_small_python_sandbox(engine)
    monkeypatch.undo()
    (failed,) = made
    assert cgroups_of(engine, failed) == []
