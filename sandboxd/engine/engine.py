"""The execution engine: a validated request in, a result out, one fresh sandbox per execution.

The engine owns its parts (pool, containerd watch, housekeeping, cleanup tracker),
all built by its constructor; the service above talks to it through ``plan``,
``check_available``, ``execute``, ``batch`` and ``languages`` only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs

from sandboxd.config import Config, LimitsConfig, PoolConfig
from sandboxd.containerd import ContainerdClient, ContainerdError
from sandboxd.engine.agent import OutputListener
from sandboxd.engine.cgroups import CgroupUsage
from sandboxd.engine.cleanups import Cleanups
from sandboxd.engine.files import CollectedFormatError, parse_collected
from sandboxd.engine.host import StartupError, prepare_host
from sandboxd.engine.housekeeping import Housekeeping
from sandboxd.engine.oci import SandboxLimits
from sandboxd.engine.orphans import SWEEP_INTERVAL, Listed, listed_by, reap_forever, reap_orphaned_shims
from sandboxd.engine.pool import SandboxPool
from sandboxd.engine.reconcile import reconcile
from sandboxd.engine.roots import SharedRoots
from sandboxd.engine.sandbox import HOST_LABEL, MANAGED_LABEL, ProcessOutcome, Sandbox, SandboxHost
from sandboxd.engine.watch import ContainerdUnavailableError, ContainerdWatch
from sandboxd.images.inspect import ImageState, build_status, builds_in_progress, inspect_image
from sandboxd.models import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    LanguageInfo,
    OutputFile,
)
from sandboxd.runtimes import Program, Runtime, RuntimeRegistry, load_runtimes
from sandboxd.supervisor import Supervised, Supervisor
from sandboxd.validation import InvalidFieldError

log = logging.getLogger(__name__)

# A used sandbox is removed once no program runs, or after this long at the latest.
_TEARDOWN_DEFERRAL: Final = 3.0
# Exit statuses of a process killed with the sandbox when the kernel's OOM killer ended it.
_OOM_EXIT_CODES: Final = frozenset({128, 137, 143})
# How often runtimes without an image are looked at again (an `images build` may be under way).
_IMAGE_REFRESH_INTERVAL: Final = 5.0
# Lines about output files not returned that a result's stderr carries at most.
_SKIPPED_NOTES: Final = 8
# How often shims that outlived their task are looked for (besides start-up and outages).
SHIM_REAP_INTERVAL = SWEEP_INTERVAL
LANGUAGE_LABEL: Final = "sandboxd.io/language"
POOL_LABEL: Final = "sandboxd.io/pool"


class UnsupportedLanguageError(Exception):
    """No runtime has that name or alias."""

    def __init__(self, language: str) -> None:
        super().__init__(f"Unsupported language: {language}")
        self.language = language


class UnsupportedVersionError(Exception):
    """No runtime of the language has a version the request's version is a prefix of."""

    def __init__(self, language: str, version: str, available: Sequence[str]) -> None:
        listed = ", ".join(available) or "none known"
        super().__init__(f"Unsupported version: {language} {version} (available: {listed})")
        self.language = language
        self.version = version
        self.available = tuple(available)


class RuntimeUnavailableError(Exception):
    """The runtime exists but its image is not ready."""


@attrs.frozen
class Timings:
    """Where one execution's time went, in seconds."""

    queue_wait: float = 0.0
    setup: float = 0.0
    run: float = 0.0


@attrs.frozen
class EngineSettings:
    """Limits that apply to every execution, whatever its runtime (their defaults are the config's)."""

    output_limit_bytes: int
    code_bytes: int
    stdin_bytes: int
    files_bytes: int
    workspace_bytes: int
    tmp_bytes: int
    file_size_bytes: int
    open_files: int

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> EngineSettings:
        """The settings the configuration's ``[limits]`` give, in bytes."""
        return cls(
            output_limit_bytes=limits.output_bytes,
            code_bytes=limits.code_bytes,
            stdin_bytes=limits.stdin_bytes,
            files_bytes=limits.files_bytes,
            workspace_bytes=limits.workspace_mib << 20,
            tmp_bytes=limits.tmp_mib << 20,
            file_size_bytes=limits.file_size_mib << 20,
            open_files=limits.open_files,
        )


@attrs.frozen
class Plan:
    """A request checked against its runtime: everything needed to run it."""

    request: ExecutionRequest
    runtime: Runtime
    # The run command ends with the request's args.
    program: Program
    timeout: float
    environment: Mapping[str, str]
    # What /workspace holds before the program starts: its source, and the request's files.
    files: Mapping[str, bytes]


class EngineObserver(Protocol):
    """What the engine tells an observer (metrics) as it works."""

    def sandbox_removed(self, seconds: float) -> None:
        """A used sandbox was removed, in ``seconds``."""

    def pool_take(self, runtime: str, hit: bool) -> None:
        """An execution of ``runtime`` found an idle sandbox (``hit``) or had to boot one."""


class _Unobserved:
    """An observer that does nothing (the CLI's engines)."""

    def sandbox_removed(self, seconds: float) -> None:
        """Nothing."""

    def pool_take(self, runtime: str, hit: bool) -> None:
        """Nothing."""


def sandbox_limits(runtime: Runtime, settings: EngineSettings) -> SandboxLimits:
    """The limits every sandbox of ``runtime`` runs under: the runtime's, and the daemon's ``settings``."""
    return SandboxLimits(
        memory_bytes=runtime.limits.memory_mib << 20,
        pids=runtime.limits.pids,
        cpus=runtime.limits.cpus,
        tmp_bytes=settings.tmp_bytes,
        file_size_bytes=settings.file_size_bytes,
        open_files=settings.open_files,
    )


def failed_result(execution_id: str, plan: Plan, status: ExecutionStatus, note: str) -> ExecutionResult:
    """A result for an execution that ended without its program running to the end."""
    return _result(execution_id, plan, _Ending(b"", b"", -1, 0.0, status, note), None)


def _sandbox_failed(execution_id: str, plan: Plan, error: Exception) -> ExecutionResult:
    log.error("execution %s failed in the sandbox layer", execution_id, exc_info=error)
    note = f"internal error: the sandbox failed ({type(error).__name__}); execution {execution_id}"
    return failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note)


class Engine:
    """Runs executions in sandboxes and knows which runtimes can serve."""

    def __init__(
        self,
        host: SandboxHost,
        runtimes: RuntimeRegistry,
        settings: EngineSettings,
        pool: PoolConfig,
        observer: EngineObserver | None = None,
        *,
        image_builds: Path | None = None,
        owns_host: bool = False,
    ) -> None:
        unknown = sorted(set(pool.runtimes) - {runtime.name for runtime in runtimes})
        if unknown:
            raise StartupError(f"pool.runtimes: no such runtime: {', '.join(unknown)}")
        self._host = host
        # The daemon's engine: every sandbox with this host's label is its own to remove, at
        # start-up and at close. A command's engine beside a daemon must never touch them.
        self._owns_host = owns_host
        # Where `images build` marks what it is building: such a runtime is "image building".
        self._image_builds = image_builds
        self._runtimes = runtimes
        self._settings = settings
        self._observer: EngineObserver = observer or _Unobserved()
        self._images: dict[str, ImageState] = {}
        # Sandboxes in use, which reconciliation after an outage must leave alone.
        self._active: set[str] = set()
        # Who hears the output of the execution in each sandbox in use, as it arrives.
        self._listeners: dict[str, OutputListener] = {}
        self._cleanups = Cleanups()
        self._roots = SharedRoots(
            host.client, host.roots, labels={MANAGED_LABEL: "true", HOST_LABEL: host.host_id}
        )
        self._housekeeping = Housekeeping()
        self._watch = ContainerdWatch(host.client, self._after_outage)
        self._pool = (
            SandboxPool(
                pool,
                [runtime.name for runtime in runtimes],
                self._boot_for_pool,
                self._sandbox_memory,
                self._cleanups,
                quiet=self._housekeeping.quiet,
                on_take=self._observer.pool_take,
            )
            if pool.enabled
            else None
        )
        self._loops: list[Supervised] = []

    @classmethod
    async def open(
        cls,
        config: Config,
        client: ContainerdClient,
        observer: EngineObserver | None = None,
        *,
        reconcile_leftovers: bool,
    ) -> Engine:
        """An engine for this host: state directories made, runtimes loaded, images inspected.

        Only the daemon reconciles (removes sandboxes its state directory's earlier run left):
        a command run beside a serving daemon must never touch that daemon's sandboxes.
        """
        host = await asyncio.to_thread(prepare_host, config, client)
        runtimes = await asyncio.to_thread(load_runtimes, config.paths.runtimes)
        engine = cls(
            host, runtimes, EngineSettings.from_limits(config.limits), config.pool, observer,
            image_builds=builds_in_progress(config.paths.data), owns_host=reconcile_leftovers,
        )  # fmt: skip
        if reconcile_leftovers:
            await reconcile(host)
        await engine.refresh_images()
        return engine

    def start(self, supervisor: Supervisor) -> None:
        """Start the engine's background loops: the containerd watch, the pool, the shim reaper."""
        namespace = self._host.client.namespace
        self._loops.append(supervisor.start("containerd watch", self._watch.run_forever))
        if self._pool is not None:
            self._loops.append(supervisor.start("sandbox pool", self._pool.run_forever))
        self._loops.append(
            supervisor.start(
                "orphaned shim reaper", lambda: reap_forever(namespace, SHIM_REAP_INTERVAL, self._listed)
            )
        )
        self._loops.append(supervisor.start("image refresh", self._refresh_images_forever))

    async def close(self) -> None:
        """Stop the loops, remove the pool's sandboxes, and wait for every removal under way."""
        for loop in self._loops:
            await loop.stop()
        if self._pool is not None:
            await self._cleanups.complete_even_if_cancelled(self._pool.close())
        await self._cleanups.drain()
        await self._roots.close()
        if self._owns_host and self._watch.available:
            # A removal that failed (containerd away at the time) left its sandbox to be found
            # again: found now, so that a daemon that stops leaves nothing of its own behind.
            # Reconciliation ends orphaned shims too.
            try:
                await reconcile(self._host, left_by="removals that failed while this daemon ran")
            except ContainerdError as error:
                log.warning("at close, what failed removals left could not be looked for: %s", error)
            else:
                return
        await asyncio.to_thread(reap_orphaned_shims, self._host.client.namespace, await self._listed())

    async def _listed(self) -> Listed | None:
        """What containerd lists (see ``listed_by``); None while it cannot answer."""
        try:
            return await listed_by(self._host.client)
        except ContainerdError:
            return None

    async def drain(self) -> None:
        """Wait until every sandbox removal under way has finished."""
        await self._cleanups.drain()

    # -- what the service uses -------------------------------------------------------------

    def supports(self, language: str) -> bool:
        """True when a runtime has ``language`` as its name or alias."""
        return self._runtimes.get(language) is not None

    def plan(self, request: ExecutionRequest) -> Plan:
        """Check a request against its runtime; raise on an unknown language or version, or too much asked."""
        runtime = self._resolve(request)
        if len(request.code.encode()) > self._settings.code_bytes:
            raise InvalidFieldError("code", f"must be at most {self._settings.code_bytes} bytes")
        if request.stdin is not None and len(request.stdin.encode()) > self._settings.stdin_bytes:
            raise InvalidFieldError("stdin", f"must be at most {self._settings.stdin_bytes} bytes")
        limits = runtime.limits
        if request.timeout is not None and request.timeout > limits.max_timeout:
            raise InvalidFieldError(
                "timeout", f"must be at most {limits.max_timeout:g} seconds for {runtime.name}"
            )
        timeout = float(request.timeout) if request.timeout is not None else limits.timeout
        if request.expected_output is not None:
            expected = len(request.expected_output.encode())
            output_limit = self._settings.output_limit_bytes
            if expected > output_limit:
                raise InvalidFieldError("expected_output", f"must be at most {output_limit} bytes")
        if request.args and not runtime.arguments:
            raise InvalidFieldError("args", f"{runtime.name} programs take no command-line arguments")
        program = runtime.program_for(request.code)
        return Plan(
            request=request,
            runtime=runtime,
            program=attrs.evolve(program, run=program.run + request.args),
            timeout=timeout,
            environment={**runtime.environment, **(request.environment or {})},
            files=self._workspace_files(request, program.source_file),
        )

    def _resolve(self, request: ExecutionRequest) -> Runtime:
        """The runtime that runs ``request``: the one its language names (by name or alias).

        With a version, it is the first runtime of that one's language (the default, then the
        others by name) whose known version the request's is a prefix of.
        """
        named = self._runtimes.get(request.language)
        if named is None:
            raise UnsupportedLanguageError(request.language)
        if request.version is None:
            return named
        chosen = self._runtimes.matching(named.language, request.version, self._known_version)
        if chosen is None:
            known = map(self._known_version, self._runtimes.of_language(named.language))
            raise UnsupportedVersionError(
                named.language, request.version, [v for v in known if v is not None]
            )
        return chosen

    def _known_version(self, runtime: Runtime) -> str | None:
        """The version number ``runtime`` provides: its image's once inspected here, else its declared one."""
        state = self._images.get(runtime.name)
        return (runtime.parse_version(state.version) if state else None) or runtime.version

    def _workspace_files(self, request: ExecutionRequest, source_file: str) -> dict[str, bytes]:
        files = {file.name: file.data() for file in request.files}
        if source_file in files or any(name.startswith(f"{source_file}/") for name in files):
            raise InvalidFieldError("files", f"{source_file} is the program's own source file")
        size = sum(map(len, files.values()))
        if size > self._settings.files_bytes:
            raise InvalidFieldError("files", f"must be at most {self._settings.files_bytes} bytes in all")
        return {source_file: request.code.encode(), **files}

    def check_available(self, plan: Plan) -> str:
        """The chain ID of the plan's runtime image; raise when it cannot run now.

        The one availability check: ``RuntimeUnavailableError`` for a runtime whose image is not
        ready, ``ContainerdUnavailableError`` while containerd does not answer.
        """
        state = self._images.get(plan.runtime.name)
        if state is None or not state.available or state.chain_id is None:
            reason = state.reason if state else "its image has not been inspected"
            raise RuntimeUnavailableError(f"Runtime {plan.runtime.name} is not available: {reason}")
        self._watch.require()
        return state.chain_id

    @contextlib.contextmanager
    def batch(self, plans: Sequence[Plan]) -> Iterator[None]:
        """Run a batch's executions in the block, one after another.

        The pool boots ahead for all of them, and the moments between two programs are no
        time for housekeeping.
        """
        if self._pool is not None:
            for name, count in collections.Counter(plan.runtime.name for plan in plans).items():
                self._pool.expect(name, count)
        with self._housekeeping.program_running():
            yield

    async def execute(
        self, plan: Plan, execution_id: str, *, on_output: OutputListener | None = None
    ) -> tuple[ExecutionResult, Timings]:
        """Run a planned execution in a fresh sandbox; say how long getting it ready and the run took.

        ``on_output`` hears the program's output as it arrives (within the output limit, which
        holds for it as for the result); a compile step's output is not its: it becomes the
        result's stderr when compiling fails, and nothing when it succeeds.

        Raises ``ContainerdUnavailableError`` (and ``RuntimeUnavailableError``) when nothing ran,
        so the caller may retry; once the program started, every failure of the sandbox layer is
        an ``internal_error`` result.
        """
        chain_id = self.check_available(plan)
        runtime = plan.runtime
        started = time.monotonic()
        pooled = self._pool.take(runtime.name, chain_id) if self._pool is not None else None
        try:
            try:
                sandbox = pooled or await self._boot_on_demand(execution_id, runtime, chain_id)
            except (ContainerdError, OSError) as error:
                return _sandbox_failed(execution_id, plan, error), Timings()
            self._active.add(sandbox.id)
            if on_output is not None:
                self._listeners[sandbox.id] = on_output
            try:
                with self._watch.translating():
                    await sandbox.write_files(plan.files)
                    setup = time.monotonic() - started
                    with self._housekeeping.program_running():
                        ending = await self._run_steps(sandbox, plan, self.sandbox_limits(runtime))
                        if plan.request.output_files:
                            ending = await self._collect(sandbox, plan, ending)
                    usage = await sandbox.usage()
            except ContainerdUnavailableError:
                note = "internal error: containerd became unavailable during the execution"
                return failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note), Timings()
            except (ContainerdError, OSError) as error:
                return _sandbox_failed(execution_id, plan, error), Timings()
            finally:
                self._active.discard(sandbox.id)
                self._listeners.pop(sandbox.id, None)
                # The caller has its result as soon as it is known; removal goes on in the background.
                self._cleanups.destroy_in_background(
                    sandbox, self._observer.sandbox_removed, self._quiet_for_teardown
                )
        finally:
            if self._pool is not None:
                self._pool.release(runtime.name)
        return _result(execution_id, plan, ending, usage), Timings(setup=setup, run=ending.elapsed)

    async def wait_available(self) -> None:
        """Return once containerd answers again."""
        await self._watch.wait_available()

    def languages(self) -> list[LanguageInfo]:
        """Every runtime with its language, version and whether it can run now."""
        listed = []
        for runtime in self._runtimes:
            state = self._images.get(runtime.name)
            listed.append(
                LanguageInfo(
                    runtime=runtime.name,
                    language=runtime.language,
                    version=self._known_version(runtime),
                    version_string=state.version if state else None,
                    default=runtime.is_default,
                    aliases=runtime.aliases,
                    available=bool(state and state.available),
                    reason=state.reason if state else "not inspected yet",
                )
            )
        return listed

    # -- what operators and tests read -----------------------------------------------------

    @property
    def containerd_available(self) -> bool:
        """Whether containerd answered at the last look."""
        return self._watch.available

    @property
    def runtimes(self) -> RuntimeRegistry:
        """The runtimes this engine serves."""
        return self._runtimes

    @property
    def host(self) -> SandboxHost:
        """Where this engine makes its sandboxes."""
        return self._host

    @property
    def cleanups(self) -> Cleanups:
        """The engine's removals under way."""
        return self._cleanups

    def pool_runtimes(self) -> list[str]:
        """The runtimes the pool keeps sandboxes for (none when the pool is off)."""
        return list(self._pool.runtimes) if self._pool is not None else []

    def idle_sandboxes(self, runtime: str) -> int:
        """Idle sandboxes of ``runtime`` the pool holds now."""
        return self._pool.idle_count(runtime) if self._pool is not None else 0

    def pooled_sandbox_ids(self) -> set[str]:
        """Every sandbox the pool holds or is booting: idle, they are no execution's."""
        return self._pool.sandbox_ids() if self._pool is not None else set()

    async def root_for(self, chain_id: str) -> Path:
        """The host directory where the image of ``chain_id`` is mounted read-only for its sandboxes."""
        return await self._roots.path_for(chain_id)

    def shared_root_keys(self) -> set[str]:
        """The images' shared roots (view snapshots, leases, mounts): the engine's, no execution's."""
        return self._roots.keys()

    # -- the parts' work -------------------------------------------------------------------

    def sandbox_limits(self, runtime: Runtime) -> SandboxLimits:
        """The limits every sandbox of ``runtime`` runs under."""
        return sandbox_limits(runtime, self._settings)

    async def boot(self, runtime: Runtime, sandbox_id: str, chain_id: str, *, pooled: bool) -> Sandbox:
        """Boot a sandbox for ``runtime`` running image ``chain_id``."""
        labels = {LANGUAGE_LABEL: runtime.name}
        if pooled:
            labels[POOL_LABEL] = "true"
        return await Sandbox.create(
            self._host,
            sandbox_id,
            image=runtime.image,
            root=await self.root_for(chain_id),
            limits=self.sandbox_limits(runtime),
            workspace_bytes=self._settings.workspace_bytes,
            labels=labels,
            cleanups=self._cleanups,
        )

    async def _boot_for_pool(self, name: str, sandbox_id: str) -> tuple[Sandbox, str] | None:
        """A sandbox for the pool, or None while the runtime or containerd cannot serve."""
        runtime = self._runtimes.get(name)
        state = self._images.get(name)
        if runtime is None or state is None or state.chain_id is None or not state.available:
            return None
        if not self._watch.available:
            return None
        return await self.boot(runtime, sandbox_id, state.chain_id, pooled=True), state.chain_id

    async def _sandbox_memory(self, sandbox: Sandbox) -> int | None:
        """What ``sandbox`` uses now (an idle one: what keeping it costs)."""
        return (await sandbox.usage()).memory_bytes

    async def refresh_images(self) -> None:
        """Look up every runtime's image in containerd."""
        for runtime in self._runtimes:
            try:
                state = await inspect_image(self._host.client, runtime)
            except ContainerdError as error:
                state = ImageState(
                    runtime=runtime.name, reference=runtime.image, available=False, reason=str(error)
                )
            building = build_status(self._image_builds, runtime.name) if self._image_builds else None
            if not state.available and building is not None:
                state = attrs.evolve(state, reason=building)
            if state.available and not self._images.get(runtime.name, state).available:
                log.info("runtime %s is available now: %s", runtime.name, state.version)
            self._images[runtime.name] = state

    async def _refresh_images_forever(self) -> None:
        """While a runtime has no image, look again every few seconds: one built meanwhile serves at once."""
        while True:
            await asyncio.sleep(_IMAGE_REFRESH_INTERVAL)
            await self._refresh_unavailable()

    async def _refresh_unavailable(self) -> None:
        if self._watch.available and not all(state.available for state in self._images.values()):
            await self.refresh_images()

    async def _after_outage(self) -> None:
        # Idle sandboxes outlive a containerd restart (their agents answer through FIFOs); one
        # that died meanwhile is never handed out. Flushing them here only delayed recovery.
        keep: Collection[str] = self._active | self.pooled_sandbox_ids() | self.shared_root_keys()
        await reconcile(self._host, keep=keep, left_by="removals that failed while containerd was away")
        await self.refresh_images()

    async def _quiet_for_teardown(self) -> None:
        await self._housekeeping.quiet(_TEARDOWN_DEFERRAL)

    async def _boot_on_demand(self, execution_id: str, runtime: Runtime, chain_id: str) -> Sandbox:
        # Never the execution's id alone: a retried execution (after a restart) must not meet
        # the remains of its first sandbox, which containerd may still be removing.
        sandbox_id = f"{execution_id}.{secrets.token_hex(4)}"
        self._active.add(sandbox_id)  # reconciliation after an outage leaves it alone while it boots
        try:
            # Nothing ran yet: the caller gets 503 and may retry, rather than a failed result.
            with self._watch.translating():
                return await self.boot(runtime, sandbox_id, chain_id, pooled=False)
        finally:
            self._active.discard(sandbox_id)  # the caller marks the booted sandbox active itself

    async def _run_steps(self, sandbox: Sandbox, plan: Plan, limits: SandboxLimits) -> _Ending:
        """Compile or check the syntax (if the runtime does), then run; say how it ended."""
        program = plan.program
        budget = plan.timeout
        elapsed = 0.0
        # A compile step and a parse-only check end alike when they fail: nothing of the program ran.
        first = program.compile or program.check
        if first:
            built = await self._exec(sandbox, first, plan, b"", budget)
            elapsed = built.duration
            failure = await self._failure(sandbox, built, plan, limits)
            if failure is not None or built.exit_code != 0:
                status, note = failure or (
                    ExecutionStatus.COMPILE_ERROR,
                    f"{_NOT_PARSED} (its syntax check exited with status {built.exit_code})"
                    if program.check
                    else f"compilation failed with exit status {built.exit_code}",
                )
                stderr = built.stdout.data + built.stderr.data
                return _Ending(b"", stderr, -1, elapsed, status, note)
            budget = max(budget - elapsed, 0.001)
        stdin = (plan.request.stdin or "").encode()
        ran = await self._exec(
            sandbox, program.run, plan, stdin, budget, status_pipe=program.check_in_run,
            extra_environment=program.run_environment,
        )  # fmt: skip
        elapsed += ran.duration
        failure = await self._failure(sandbox, ran, plan, limits)
        if failure is not None:
            status, note = failure
            return _Ending(ran.stdout.data, ran.stderr.data, -1, elapsed, status, note)
        if _did_not_parse(program, ran):
            # The interpreter's own message; whatever else it printed belongs with it, as a compiler's does.
            stderr = ran.stdout.data + ran.stderr.data
            return _Ending(b"", stderr, -1, elapsed, ExecutionStatus.COMPILE_ERROR, _NOT_PARSED)
        exit_code = -1 if ran.exit_code is None else ran.exit_code
        return _Ending(ran.stdout.data, ran.stderr.data, exit_code, elapsed, ExecutionStatus.COMPLETED, None)

    async def _collect(self, sandbox: Sandbox, plan: Plan, ending: _Ending) -> _Ending:
        """The ending with the files the request asked for; only a program that ended on its own has any."""
        if ending.status is not ExecutionStatus.COMPLETED or not sandbox.alive:
            return attrs.evolve(ending, files=())
        collected = await sandbox.collect(plan.request.output_files)
        try:
            found = parse_collected(
                collected.stdout.data, exit_code=collected.exit_code, truncated=collected.output_exceeded
            )
        except CollectedFormatError as error:
            note = f"sandboxd: output files could not be read: {error}\n"
            return attrs.evolve(ending, stderr=ending.stderr + note.encode(), files=())
        notes = list(found.skipped[:_SKIPPED_NOTES])
        if len(found.skipped) > _SKIPPED_NOTES:
            notes.append(f"{len(found.skipped) - _SKIPPED_NOTES} more output files not returned")
        stderr = ending.stderr + "".join(f"sandboxd: {note}\n" for note in notes).encode()
        return attrs.evolve(ending, stderr=stderr, files=found.files)

    async def _exec(
        self,
        sandbox: Sandbox,
        argv: tuple[str, ...],
        plan: Plan,
        stdin: bytes,
        timeout: float,
        *,
        status_pipe: bool = False,
        extra_environment: Mapping[str, str] | None = None,
    ) -> ProcessOutcome:
        # A compile step or a parse-only syntax check: what they print is no program's live output.
        compiling = argv != plan.program.run
        return await sandbox.run(
            argv,
            environment={**plan.environment, **(extra_environment or {})},
            stdin=stdin,
            timeout=timeout,
            output_cap=self._settings.output_limit_bytes,
            on_output=None if compiling else self._listeners.get(sandbox.id),
            status_pipe=status_pipe,
        )

    async def _failure(
        self, sandbox: Sandbox, outcome: ProcessOutcome, plan: Plan, limits: SandboxLimits
    ) -> tuple[ExecutionStatus, str] | None:
        """Why a process did not complete normally, or None when it did."""
        if outcome.timed_out:
            return ExecutionStatus.TIMEOUT, f"execution timed out after {plan.timeout:g} s"
        if outcome.output_exceeded:
            limit = self._settings.output_limit_bytes
            return (
                ExecutionStatus.OUTPUT_LIMIT,
                f"output limit of {limit} bytes per stream exceeded; output truncated",
            )
        if outcome.exit_code in _OOM_EXIT_CODES or not sandbox.alive:
            # The kernel counts the OOM kill before runsc reports the exit: no wait needed.
            usage = await sandbox.usage()
            if usage.oom_kills:
                return (
                    ExecutionStatus.MEMORY_LIMIT,
                    f"memory limit of {limits.memory_bytes >> 20} MiB exceeded",
                )
        if not sandbox.alive:
            return ExecutionStatus.INTERNAL_ERROR, "internal error: the sandbox stopped unexpectedly"
        return None


def _result(execution_id: str, plan: Plan, ending: _Ending, usage: CgroupUsage | None) -> ExecutionResult:
    text = ending.stderr.decode(errors="replace")
    if ending.note is not None:
        text += ("" if not text or text.endswith("\n") else "\n") + f"sandboxd: {ending.note}\n"
    cpu_ns = usage.cpu_time_ns if usage else None
    request = plan.request
    stdout = ending.stdout.decode(errors="replace")
    passed = None
    if request.expected_output is not None:
        ran_clean = ending.status is ExecutionStatus.COMPLETED and ending.exit_code == 0
        passed = ran_clean and request.compare.matches(stdout, request.expected_output)
    return ExecutionResult(
        execution_id=execution_id,
        stdout=stdout,
        stderr=text,
        exit_code=ending.exit_code,
        execution_time=round(ending.elapsed, 4),
        language=plan.runtime.name,
        session_id=plan.request.session_id,
        status=ending.status,
        cpu_time=None if cpu_ns is None else round(cpu_ns / 1e9, 4),
        memory_peak=usage.peak_memory_bytes if usage else None,
        passed=passed,
        output_files=ending.files if request.output_files else None,
    )


@attrs.frozen
class _Ending:
    """How an execution's steps ended, before it becomes a result."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    elapsed: float
    status: ExecutionStatus
    note: str | None
    files: tuple[OutputFile, ...] = ()


# What a run command's syntax check writes to its status pipe when the program does not parse.
_SYNTAX_STATUS: Final = b"syntax"
_NOT_PARSED: Final = "the program does not parse"


def _did_not_parse(program: Program, outcome: ProcessOutcome) -> bool:
    """Whether the run's own syntax check reported that the program does not parse.

    Only the status pipe says so, which the check writes before any of the program runs (and
    closes then, where the language can): every exit status stays the program's own. A
    check that reported and yet exited 0 is not believed.
    """
    return program.check_in_run and outcome.status == _SYNTAX_STATUS and outcome.exit_code not in (0, None)
