"""One gVisor sandbox: lease, workspace, snapshot, container, task; torn down on every path.

A sandbox boots with the agent as its init process, which starts the program
(and its compile step) when asked, and the whole sandbox is destroyed
afterwards: a sandbox never serves two executions. Every resource is
registered for removal the moment it exists, so a failure half-way through
creation undoes what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from sandboxd.containerd import (
    ContainerdClient,
    ContainerdError,
    ExitStatus,
    NotFoundError,
    RuncOptions,
    TaskStatus,
)
from sandboxd.engine.agent import AgentChannel, AgentLostError, CapturedOutput, OutputListener
from sandboxd.engine.cgroups import CgroupUsage, read_usage, remove_cgroup
from sandboxd.engine.cleanups import Cleanups
from sandboxd.engine.files import COLLECT_OUTPUT_CAP, COLLECT_TIMEOUT, collect_argv
from sandboxd.engine.oci import AGENT_DIR, NOBODY, WORKSPACE, SandboxLimits, sandbox_spec
from sandboxd.engine.workspace import Workspace

log = logging.getLogger(__name__)

MANAGED_LABEL: Final = "sandboxd.io/managed"
# Which daemon made a sandbox (a digest of its state directory): at start-up a
# daemon reconciles only its own, never those of another daemon in the namespace.
HOST_LABEL: Final = "sandboxd.io/host"
SANDBOX_LABEL: Final = "sandboxd.io/sandbox"
RUNC_V2: Final = "io.containerd.runc.v2"
_KILL_WAIT: Final = 5.0
# How long an agent that quit may take to end its sandbox before it is killed after all.
_QUIT_WAIT: Final = 2.0
# From task start to the agent's first frame: a sandbox that takes longer is broken.
_AGENT_READY_TIMEOUT: Final = 30.0


def host_id_for(state_dir: Path) -> str:
    """The value of HOST_LABEL for the daemon whose state directory is ``state_dir``."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


@attrs.frozen
class SandboxHost:
    """Where and how sandboxes are made on this host."""

    client: ContainerdClient
    runsc_wrapper: Path
    runsc_root: Path
    runsc_binary: str
    agent_dir: Path
    agent_name: str
    workspaces: Path
    fifos: Path
    roots: Path
    cgroup_root: Path = Path("/sys/fs/cgroup")

    @property
    def host_id(self) -> str:
        """The mark this daemon puts on its sandboxes."""
        return host_id_for(self.workspaces.parent)

    def runtime_options(self) -> RuncOptions:
        """Runc shim options that make it drive runsc through the wrapper."""
        return RuncOptions(binary_name=str(self.runsc_wrapper), root=str(self.runsc_root))

    async def force_delete(self, sandbox_id: str) -> None:
        """Remove a runsc container directly; containerd cannot kill one left in CREATED state."""
        process = await asyncio.create_subprocess_exec(
            self.runsc_binary, "--root", str(self.runsc_root / self.client.namespace),
            "delete", "--force", sandbox_id,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await process.communicate()
        if process.returncode != 0:
            log.warning("runsc delete --force %s: %s", sandbox_id, stderr.decode(errors="replace").strip())


class SandboxError(OSError):
    """A sandbox could not be removed completely; what is left is found again at reconciliation."""


@attrs.frozen
class ProcessOutcome:
    """How one exec'd process ended. ``exit_code`` is None when it was killed by sandboxd.

    ``status`` is what the process wrote to its status pipe, when it had one.
    """

    exit_code: int | None
    stdout: CapturedOutput
    stderr: CapturedOutput
    duration: float
    timed_out: bool
    output_exceeded: bool
    status: bytes = b""


class Sandbox:
    """A running sandbox whose agent waits for a process to start; use ``create`` and always ``destroy``."""

    def __init__(self, host: SandboxHost, sandbox_id: str) -> None:
        self.host = host
        self.id = sandbox_id
        self._undo = contextlib.AsyncExitStack()
        self._init_exit: asyncio.Future[ExitStatus] | None = None
        self._fifo_dir = host.fifos / sandbox_id
        self._agent: AgentChannel | None = None
        # Set once this handle deleted the task: the container can go without asking again.
        self._task_deleted = False
        self.workspace: Workspace | None = None

    @classmethod
    def adopt(cls, host: SandboxHost, sandbox_id: str) -> Sandbox:
        """A handle on a sandbox found in containerd, set up to remove every part it may have."""
        sandbox = cls(host, sandbox_id)
        client = host.client
        sandbox._push("cgroups", sandbox._remove_cgroups)
        sandbox._push("lease", client.leases.delete, sandbox_id)
        sandbox._push("workspace", Workspace(host.workspaces / sandbox_id).remove)
        sandbox._push("fifo directory", sandbox._remove_fifo_dir)
        sandbox._push("snapshot", client.snapshots.remove, sandbox_id)
        sandbox._push("container", sandbox._delete_container)
        sandbox._push("task", sandbox._teardown_adopted_task)
        return sandbox

    @classmethod
    async def create(
        cls,
        host: SandboxHost,
        sandbox_id: str,
        *,
        image: str,
        root: Path,
        limits: SandboxLimits,
        workspace_bytes: int,
        labels: Mapping[str, str],
        cleanups: Cleanups,
    ) -> Sandbox:
        """Boot a sandbox of ``image`` (mounted read-only at ``root``) with an empty /workspace.

        It returns once the sandbox's agent is ready.

        A boot that fails or is cancelled is undone whole, in ``cleanups`` (which shutdown waits for).
        """
        sandbox = cls(host, sandbox_id)
        boot = asyncio.ensure_future(sandbox._boot(image, root, limits, workspace_bytes, labels))
        try:
            await asyncio.shield(boot)
        except BaseException:
            await cleanups.complete_even_if_cancelled(sandbox._destroy_after(boot))
            raise
        return sandbox

    async def _destroy_after(self, boot: asyncio.Future[None]) -> None:
        # A cancelled boot runs to its end before it is undone: containerd completes an RPC
        # whose caller went away (it creates the task all the same), and undo knows only the
        # steps that returned; removing the rest from under that task left runsc's processes.
        await asyncio.wait([boot])
        if not boot.cancelled():
            boot.exception()  # the caller sees it (or its own cancellation); retrieved here
        await self.destroy()

    async def _boot(
        self,
        image: str,
        root: Path,
        limits: SandboxLimits,
        workspace_bytes: int,
        labels: Mapping[str, str],
    ) -> None:
        client, sid = self.host.client, self.id
        all_labels = {MANAGED_LABEL: "true", HOST_LABEL: self.host.host_id, SANDBOX_LABEL: sid, **labels}
        # Undone last, once the task is gone: what runsc left of the cgroups it made.
        self._push("cgroups", self._remove_cgroups)
        self.workspace = await Workspace.create(self.host.workspaces, sid, workspace_bytes)
        self._push("workspace", self.workspace.remove)

        await asyncio.to_thread(AgentChannel.make_fifos, self._fifo_dir)
        self._push("fifo directory", self._remove_fifo_dir)
        agent = self._agent = AgentChannel(self._fifo_dir)
        await agent.open_replies()

        spec = sandbox_spec(
            hostname="sandbox",
            workspace=self.workspace.path,
            agent_dir=self.host.agent_dir,
            agent_name=self.host.agent_name,
            limits=limits,
            cgroups_path=self.cgroups_path,
            root=root,
        )
        await client.containers.create(
            sid, spec=spec, runtime=RUNC_V2, runtime_options=self.host.runtime_options(), image=image,
            labels=all_labels,
        )  # fmt: skip
        self._push("container", self._delete_container)

        # No rootfs mounts: the spec's root is the image's shared, already mounted root.
        await client.tasks.create(
            sid, rootfs=[], stdin=str(agent.stdin), stdout=str(agent.stdout), stderr=str(agent.stderr)
        )
        self._push("task", self._teardown_task)
        await agent.open_commands()
        self._init_exit = asyncio.ensure_future(client.tasks.wait(sid))
        await client.tasks.start(sid)
        try:
            await asyncio.wait_for(asyncio.shield(agent.ready), _AGENT_READY_TIMEOUT)
        except (AgentLostError, TimeoutError) as error:
            raise SandboxError(
                f"sandbox {sid}: its agent did not start ({error}) {agent.diagnostics}"
            ) from error

    def _push(self, what: str, action: Callable[..., Awaitable[object]], *args: str) -> None:
        async def undo() -> None:
            started = time.monotonic()
            try:
                await action(*args)
            except NotFoundError:
                pass
            except (ContainerdError, OSError):
                log.exception("sandbox %s: removing the %s failed", self.id, what)
            log.debug("sandbox %s: %s removed in %.3f s", self.id, what, time.monotonic() - started)

        self._undo.push_async_callback(undo)

    async def _delete_container(self) -> None:
        # containerd's Containers service deletes a container even while its task
        # lives, and an orphaned task can no longer be reached through the API.
        # Keep the record instead, so that reconciliation finds the sandbox again.
        if self._task_deleted:
            await self.host.client.containers.delete(self.id)
            return
        for attempt in range(2):
            try:
                await self.host.client.tasks.get(self.id)
            except NotFoundError:
                await self.host.client.containers.delete(self.id)
                return
            if attempt == 0:
                # A task that appeared after its teardown looked: a create that a dead daemon
                # had in flight completes in containerd all the same. It goes the same way.
                log.info("sandbox %s: a task appeared after teardown; removing it too", self.id)
                await self._teardown_adopted_task()
        raise SandboxError(
            f"sandbox {self.id}: its task is still there; the container is kept for reconciliation"
        )

    async def _remove_cgroups(self) -> None:
        busy = await asyncio.to_thread(remove_cgroup, self.host.cgroup_root, self.cgroups_path)
        if busy:
            raise SandboxError(f"sandbox {self.id}: its cgroup still holds processes: {busy[0]}")

    async def _remove_fifo_dir(self) -> None:
        if self._agent is not None:
            self._agent.close()
        await asyncio.to_thread(AgentChannel.remove_fifos, self._fifo_dir)

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        """Put ``files`` into /workspace, before any process of the execution runs."""
        if self.workspace is None:
            raise SandboxError(f"sandbox {self.id} has no workspace")
        await self.workspace.write_files(files)

    async def run(
        self,
        argv: Sequence[str],
        *,
        environment: Mapping[str, str],
        stdin: bytes,
        timeout: float,
        output_cap: int,
        on_output: OutputListener | None = None,
        status_pipe: bool = False,
    ) -> ProcessOutcome:
        """Run ``argv`` in /workspace until it exits, ``timeout`` seconds pass or its output overflows.

        ``on_output`` hears its output as it arrives, never more than ``output_cap`` per stream.
        With ``status_pipe`` the process gets a pipe as fd 3 (see ``ProcessOutcome.status``).
        """
        if self._agent is None:
            raise SandboxError(f"sandbox {self.id} has no agent")
        loop = asyncio.get_running_loop()
        overflow = asyncio.Event()
        started = loop.time()
        deadline = started + timeout
        process = self._agent.run(
            argv, environment, cwd=WORKSPACE, uid=NOBODY, gid=NOBODY,
            stdin=stdin, output_cap=output_cap, on_overflow=overflow.set, on_output=on_output,
            status_pipe=status_pipe,
        )  # fmt: skip
        overflowed: asyncio.Future[Any] = asyncio.ensure_future(overflow.wait())
        watched: set[asyncio.Future[Any]] = {process.exited, overflowed}
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            overflowed.cancel()
        timed_out = not process.exited.done() and not overflow.is_set()
        ended = min(loop.time(), deadline) if timed_out else loop.time()
        exit_code: int | None = None
        if process.exited.done() and process.exited.exception() is None and not overflow.is_set():
            exit_code = process.exited.result()
        else:
            # A sandbox serves one execution: ending the process is ending the sandbox.
            try:
                await self.kill()
            except ContainerdError as error:
                log.warning("sandbox %s: killing it failed (teardown kills again): %s", self.id, error)
        stdout, stderr = process.output()
        return ProcessOutcome(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            duration=ended - started,
            timed_out=timed_out,
            output_exceeded=overflow.is_set(),
            status=process.status,
        )

    async def collect(self, patterns: tuple[str, ...]) -> ProcessOutcome:
        """Have the agent read the files ``patterns`` match in /workspace, as the program's user."""
        argv = collect_argv(f"{AGENT_DIR}/{self.host.agent_name}", patterns)
        return await self.run(
            argv, environment={}, stdin=b"", timeout=COLLECT_TIMEOUT, output_cap=COLLECT_OUTPUT_CAP
        )

    async def end_processes(self) -> None:
        """End every process of the sandbox: its agent quits (cheap), else the sandbox is killed."""
        if await self._quit_agent():
            return
        with contextlib.suppress(ContainerdError):
            await self.kill()

    async def _quit_agent(self) -> bool:
        """End the sandbox through its agent, without a `runsc kill`; return whether it stopped."""
        if self._agent is None or not self._agent.quit():
            return False
        if await self.wait_stopped(_QUIT_WAIT):
            return True
        log.warning("sandbox %s: still running %g s after its agent quit; killing it", self.id, _QUIT_WAIT)
        return False

    async def kill(self) -> None:
        """SIGKILL every process in the sandbox; a sandbox that already stopped needs nothing."""
        try:
            await self.host.client.tasks.kill(self.id, signal.SIGKILL, all_processes=True)
        except NotFoundError:
            pass
        except ContainerdError:
            # runsc refuses to signal a sandbox that has stopped (killed for memory, say).
            if await self.wait_stopped(_KILL_WAIT / 5):
                return
            raise

    @property
    def cgroups_path(self) -> str:
        """The sandbox's cgroup, relative to each hierarchy's root."""
        return f"/sandboxd/{self.id}"

    async def usage(self) -> CgroupUsage:
        """Memory and CPU the sandbox used so far, and whether the kernel OOM-killed it."""
        return await asyncio.to_thread(read_usage, self.host.cgroup_root, self.cgroups_path)

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the init process to exit; return whether it did."""
        if self._init_exit is None:
            return True
        with contextlib.suppress(TimeoutError, ContainerdError):
            await asyncio.wait_for(asyncio.shield(self._init_exit), timeout)
        return self._init_exit.done()

    @property
    def alive(self) -> bool:
        """False once the agent (the init process) is gone: the sandbox was killed, e.g. out of memory.

        Judged by the agent's own pipe, not by containerd, which may be away while the sandbox runs on.
        """
        if self._agent is None or self._agent.lost:
            return False
        exit_watch = self._init_exit
        if exit_watch is None or not exit_watch.done():
            return True
        return not exit_watch.cancelled() and exit_watch.exception() is not None

    async def _teardown_task(self) -> None:
        tasks = self.host.client.tasks
        watch = self._init_exit
        if watch is None or (watch.done() and (watch.cancelled() or watch.exception() is not None)):
            # Adopted from a previous run, or the watch broke (containerd went away):
            # find out whether a task exists, and watch it afresh.
            self._stop_watching()
            try:
                status = (await tasks.get(self.id)).status
            except NotFoundError:
                return
            self._init_exit = (
                asyncio.ensure_future(tasks.wait(self.id)) if status is not TaskStatus.STOPPED else None
            )
        if self._init_exit is not None and not self._init_exit.done() and not await self._quit_agent():
            try:
                await tasks.kill(self.id, signal.SIGKILL, all_processes=True)
            except NotFoundError:
                self._stop_watching()
                return
            except ContainerdError as error:
                if (await tasks.get(self.id)).status is TaskStatus.CREATED:
                    # runsc refuses to signal a container that never started.
                    log.info("sandbox %s: forcing deletion of a CREATED task (%s)", self.id, error.detail)
                    await self.host.force_delete(self.id)
        if self._init_exit is not None:
            with contextlib.suppress(TimeoutError, ContainerdError):
                await asyncio.wait_for(asyncio.shield(self._init_exit), _KILL_WAIT)
        self._stop_watching()
        await tasks.delete(self.id)
        self._task_deleted = True

    async def _teardown_adopted_task(self) -> None:
        # The agent of a dead daemon's sandbox may block writing to a FIFO nobody
        # reads, and the shim copying its output with it: holding read ends lets both go on.
        held = await asyncio.to_thread(AgentChannel.hold_output, self._fifo_dir)
        try:
            await self._teardown_task()
        finally:
            for fd in held:
                os.close(fd)

    def _stop_watching(self) -> None:
        if self._init_exit is not None:
            self._init_exit.cancel()
            if self._init_exit.done() and not self._init_exit.cancelled():
                self._init_exit.exception()  # retrieved: a failed watch is expected once the task is gone

    async def destroy(self) -> None:
        """Remove everything the sandbox created, in reverse order; safe to call more than once."""
        undo, self._undo = self._undo, contextlib.AsyncExitStack()
        await undo.aclose()
