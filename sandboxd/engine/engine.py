"""The execution engine: a validated request in, a result out, one fresh sandbox per execution."""

from __future__ import annotations

import collections
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs

from sandboxd.containerd import ContainerdError, UnavailableError
from sandboxd.engine.cgroups import CgroupUsage
from sandboxd.engine.cleanups import destroy_in_background
from sandboxd.engine.housekeeping import Housekeeping
from sandboxd.engine.oci import SandboxLimits
from sandboxd.engine.pool import SandboxPool
from sandboxd.engine.sandbox import ProcessOutcome, Sandbox, SandboxHost
from sandboxd.engine.watch import ContainerdUnavailableError, ContainerdWatch
from sandboxd.images.inspect import ImageState, inspect_image
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, LanguageInfo
from sandboxd.runtimes import Runtime, RuntimeRegistry
from sandboxd.validation import InvalidFieldError

log = logging.getLogger(__name__)

# A used sandbox is removed once no program runs, or after this long at the latest.
_TEARDOWN_DEFERRAL: Final = 3.0
# Exit statuses of a process killed with the sandbox when the kernel's OOM killer ended it.
_OOM_EXIT_CODES: Final = frozenset({128, 137, 143})
LANGUAGE_LABEL: Final = "sandboxd.io/language"
POOL_LABEL: Final = "sandboxd.io/pool"


class UnsupportedLanguageError(Exception):
    """No runtime has that name or alias."""

    def __init__(self, language: str) -> None:
        super().__init__(f"Unsupported language: {language}")
        self.language = language


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
    """Limits that apply to every execution, whatever its runtime."""

    output_limit_bytes: int = 1 << 20
    code_bytes: int = 64 << 10
    stdin_bytes: int = 1 << 20
    workspace_bytes: int = 32 << 20
    tmp_bytes: int = 64 << 20
    file_size_bytes: int = 32 << 20
    open_files: int = 256


@attrs.frozen
class Plan:
    """A request checked against its runtime: everything needed to run it."""

    request: ExecutionRequest
    runtime: Runtime
    timeout: float
    environment: Mapping[str, str]


class Engine:
    """Runs executions in sandboxes and knows which runtimes can serve."""

    def __init__(
        self, host: SandboxHost, runtimes: RuntimeRegistry, settings: EngineSettings, watch: ContainerdWatch
    ) -> None:
        self.host = host
        self.runtimes = runtimes
        self.settings = settings
        self.watch = watch
        self.images: dict[str, ImageState] = {}
        # Sandboxes in use, which reconciliation after an outage must leave alone.
        self.active: set[str] = set()
        self.pool: SandboxPool | None = None
        self.on_teardown: Callable[[float], None] | None = None
        self.housekeeping = Housekeeping()

    def expect(self, plans: Sequence[Plan]) -> None:
        """Tell the pool that these executions are coming (a batch), so that it boots ahead."""
        if self.pool is None:
            return
        for name, count in collections.Counter(plan.runtime.name for plan in plans).items():
            self.pool.expect(name, count)

    def sandbox_limits(self, runtime: Runtime) -> SandboxLimits:
        """The limits every sandbox of ``runtime`` runs under."""
        return SandboxLimits(
            memory_bytes=runtime.limits.memory_mib << 20,
            pids=runtime.limits.pids,
            cpus=runtime.limits.cpus,
            tmp_bytes=self.settings.tmp_bytes,
            file_size_bytes=self.settings.file_size_bytes,
            open_files=self.settings.open_files,
        )

    async def boot(self, runtime: Runtime, sandbox_id: str, chain_id: str, *, pooled: bool) -> Sandbox:
        """Boot a sandbox for ``runtime`` running image ``chain_id``."""
        labels = {LANGUAGE_LABEL: runtime.name}
        if pooled:
            labels[POOL_LABEL] = "true"
        return await Sandbox.create(
            self.host,
            sandbox_id,
            image=runtime.image,
            chain_id=chain_id,
            limits=self.sandbox_limits(runtime),
            workspace_bytes=self.settings.workspace_bytes,
            labels=labels,
        )

    async def boot_for_pool(self, name: str, sandbox_id: str) -> tuple[Sandbox, str] | None:
        """A sandbox for the pool, or None while the runtime or containerd cannot serve."""
        runtime = self.runtimes.get(name)
        state = self.images.get(name)
        if runtime is None or state is None or state.chain_id is None or not state.available:
            return None
        if not self.watch.available:
            return None
        return await self.boot(runtime, sandbox_id, state.chain_id, pooled=True), state.chain_id

    async def sandbox_memory(self, sandbox: Sandbox) -> int | None:
        """What ``sandbox`` uses now (an idle one: what keeping it costs)."""
        return (await sandbox.usage()).memory_bytes

    async def refresh_images(self) -> None:
        """Look up every runtime's image in containerd."""
        for runtime in self.runtimes:
            try:
                self.images[runtime.name] = await inspect_image(self.host.client, runtime)
            except ContainerdError as error:
                self.images[runtime.name] = ImageState(
                    runtime=runtime.name, reference=runtime.image, available=False, reason=str(error)
                )

    def languages(self) -> list[LanguageInfo]:
        """Every runtime with its version and whether it can run now."""
        listed = []
        for runtime in self.runtimes:
            state = self.images.get(runtime.name)
            listed.append(
                LanguageInfo(
                    language=runtime.name,
                    version=state.version if state else None,
                    aliases=runtime.aliases,
                    available=bool(state and state.available),
                    reason=state.reason if state else "not inspected yet",
                )
            )
        return listed

    def plan(self, request: ExecutionRequest) -> Plan:
        """Check a request against its runtime; raise on an unknown language or a limit above the maximum."""
        runtime = self.runtimes.get(request.language)
        if runtime is None:
            raise UnsupportedLanguageError(request.language)
        if len(request.code.encode()) > self.settings.code_bytes:
            raise InvalidFieldError("code", f"must be at most {self.settings.code_bytes} bytes")
        if request.stdin is not None and len(request.stdin.encode()) > self.settings.stdin_bytes:
            raise InvalidFieldError("stdin", f"must be at most {self.settings.stdin_bytes} bytes")
        limits = runtime.limits
        if request.timeout is not None and request.timeout > limits.max_timeout:
            raise InvalidFieldError(
                "timeout", f"must be at most {limits.max_timeout:g} seconds for {runtime.name}"
            )
        timeout = float(request.timeout) if request.timeout is not None else limits.timeout
        return Plan(
            request=request,
            runtime=runtime,
            timeout=timeout,
            environment={**runtime.environment, **(request.environment or {})},
        )

    def check_available(self, plan: Plan) -> str:
        """The chain ID of the plan's runtime image; raise when the runtime cannot run now."""
        state = self.images.get(plan.runtime.name)
        if state is None or not state.available or state.chain_id is None:
            reason = state.reason if state else "its image has not been inspected"
            raise RuntimeUnavailableError(f"Runtime {plan.runtime.name} is not available: {reason}")
        return state.chain_id

    async def execute(self, plan: Plan, execution_id: str | None = None) -> ExecutionResult:
        """Run a planned execution in a fresh sandbox; sandbox failures become ``internal_error`` results."""
        result, _ = await self.execute_timed(plan, execution_id or str(uuid.uuid4()))
        return result

    async def execute_timed(self, plan: Plan, execution_id: str) -> tuple[ExecutionResult, Timings]:
        """Like ``execute``, and say how long getting the sandbox ready and the run took."""
        chain_id = self.check_available(plan)
        self.watch.require()
        try:
            return await self._execute(execution_id, plan, chain_id)
        except UnavailableError as error:
            self.watch.report(error)
            note = "internal error: containerd became unavailable during the execution"
            return self.failed(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note), Timings()
        except (ContainerdError, OSError) as error:
            log.exception("execution %s failed in the sandbox layer", execution_id)
            note = f"internal error: the sandbox failed ({type(error).__name__}); execution {execution_id}"
            return self.failed(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note), Timings()

    async def _execute(self, execution_id: str, plan: Plan, chain_id: str) -> tuple[ExecutionResult, Timings]:
        runtime, request = plan.runtime, plan.request
        limits = self.sandbox_limits(runtime)
        started = time.monotonic()
        pooled = self.pool.take(runtime.name, chain_id) if self.pool is not None else None
        try:
            if pooled is not None:
                sandbox = pooled
            else:
                sandbox = await self._boot_on_demand(execution_id, runtime, chain_id)
            self.active.add(sandbox.id)
            try:
                await sandbox.write_files({runtime.source_file: request.code.encode()})
                setup = time.monotonic() - started
                with self.housekeeping.program_running():
                    ending = await self._run_steps(sandbox, plan, limits)
                usage = await sandbox.usage()
                result = self._result(execution_id, plan, ending, usage)
            finally:
                self.active.discard(sandbox.id)
                # The caller has its result as soon as it is known; removal goes on in the background.
                destroy_in_background(sandbox, self.on_teardown, self._quiet_for_teardown)
        finally:
            if self.pool is not None:
                self.pool.release(runtime.name)
        return result, Timings(setup=setup, run=ending.elapsed)

    async def _quiet_for_teardown(self) -> None:
        await self.housekeeping.quiet(_TEARDOWN_DEFERRAL)

    async def _boot_on_demand(self, execution_id: str, runtime: Runtime, chain_id: str) -> Sandbox:
        # Never the execution's id alone: a retried execution (after a restart) must not meet
        # the remains of its first sandbox, which containerd may still be removing.
        sandbox_id = f"{execution_id}.{secrets.token_hex(4)}"
        self.active.add(sandbox_id)  # reconciliation after an outage leaves it alone while it boots
        try:
            return await self.boot(runtime, sandbox_id, chain_id, pooled=False)
        except UnavailableError as error:
            # Nothing ran: the caller gets 503 and may retry, rather than a failed result.
            self.watch.report(error)
            raise ContainerdUnavailableError(
                f"containerd is unavailable ({error.detail}); retry later"
            ) from error
        finally:
            self.active.discard(sandbox_id)  # the caller marks the booted sandbox active itself

    async def _run_steps(self, sandbox: Sandbox, plan: Plan, limits: SandboxLimits) -> _Ending:
        """Compile (if the runtime does) and run; say how it ended."""
        runtime = plan.runtime
        budget = plan.timeout
        elapsed = 0.0
        if runtime.compiled:
            built = await self._exec(sandbox, runtime.compile, plan, b"", budget)
            elapsed = built.duration
            failure = await self._failure(sandbox, built, plan, limits)
            if failure is not None or built.exit_code != 0:
                status, note = failure or (
                    ExecutionStatus.COMPILE_ERROR,
                    f"compilation failed with exit status {built.exit_code}",
                )
                stderr = built.stdout.data + built.stderr.data
                return _Ending(b"", stderr, -1, elapsed, status, note)
            budget = max(budget - elapsed, 0.001)
        stdin = (plan.request.stdin or "").encode()
        ran = await self._exec(sandbox, runtime.run, plan, stdin, budget)
        elapsed += ran.duration
        failure = await self._failure(sandbox, ran, plan, limits)
        if failure is not None:
            status, note = failure
            return _Ending(ran.stdout.data, ran.stderr.data, -1, elapsed, status, note)
        exit_code = -1 if ran.exit_code is None else ran.exit_code
        return _Ending(ran.stdout.data, ran.stderr.data, exit_code, elapsed, ExecutionStatus.COMPLETED, None)

    async def _exec(
        self, sandbox: Sandbox, argv: tuple[str, ...], plan: Plan, stdin: bytes, timeout: float
    ) -> ProcessOutcome:
        return await sandbox.run(
            argv,
            environment=plan.environment,
            stdin=stdin,
            timeout=timeout,
            output_cap=self.settings.output_limit_bytes,
        )

    async def _failure(
        self, sandbox: Sandbox, outcome: ProcessOutcome, plan: Plan, limits: SandboxLimits
    ) -> tuple[ExecutionStatus, str] | None:
        """Why a process did not complete normally, or None when it did."""
        if outcome.timed_out:
            return ExecutionStatus.TIMEOUT, f"execution timed out after {plan.timeout:g} s"
        if outcome.output_exceeded:
            limit = self.settings.output_limit_bytes
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

    def failed(self, execution_id: str, plan: Plan, status: ExecutionStatus, note: str) -> ExecutionResult:
        """A result for an execution that ended without its program running to the end."""
        return self._result(execution_id, plan, _Ending(b"", b"", -1, 0.0, status, note), None)

    def _result(
        self, execution_id: str, plan: Plan, ending: _Ending, usage: CgroupUsage | None
    ) -> ExecutionResult:
        text = ending.stderr.decode(errors="replace")
        if ending.note is not None:
            text += ("" if not text or text.endswith("\n") else "\n") + f"sandboxd: {ending.note}\n"
        cpu_ns = usage.cpu_time_ns if usage else None
        return ExecutionResult(
            execution_id=execution_id,
            stdout=ending.stdout.decode(errors="replace"),
            stderr=text,
            exit_code=ending.exit_code,
            execution_time=round(ending.elapsed, 4),
            language=plan.runtime.name,
            session_id=plan.request.session_id,
            status=ending.status,
            cpu_time=None if cpu_ns is None else round(cpu_ns / 1e9, 4),
            memory_peak=usage.peak_memory_bytes if usage else None,
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
