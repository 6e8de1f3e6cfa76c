"""Conformance: every runtime in runtimes/ runs its own snippets the same way (no test code per language).

Each runtime's TOML carries a [conformance] table; adding a language means adding its
file, building its image and running this suite.
"""

from __future__ import annotations

import json
import re

import pytest

from sandboxd.engine.engine import Engine
from sandboxd.models import ExecutionStatus
from sandboxd.runtimes import Runtime, SyntaxCheckKind
from tests.helpers import engine_run, shipped_runtimes

pytestmark = pytest.mark.integration

RUNTIMES = shipped_runtimes().runtimes
ALL = pytest.mark.parametrize("runtime", RUNTIMES, ids=[r.name for r in RUNTIMES])
COMPILED = [r for r in RUNTIMES if r.compiled]
WITH_PACKAGES = [r for r in RUNTIMES if r.build.pip or r.build.npm]
# sandboxd's note after a compiler's or a syntax check's own message.
_NOT_PARSED_NOTE = re.compile(
    r"sandboxd: (compilation failed with exit status [1-9]\d*"
    r"|the program does not parse( \(its syntax check exited with status [1-9]\d*\))?)"
)


@ALL
async def test_hello(engine: Engine, runtime: Runtime) -> None:
    """Prints hello and exits 0."""
    result = await engine_run(engine, runtime.name, runtime.conformance.hello)
    assert (result.stdout, result.exit_code, result.status) == ("hello\n", 0, ExecutionStatus.COMPLETED), (
        result
    )


NAMED = [(r, code) for r in RUNTIMES for code in r.conformance.named_entry]


@pytest.mark.parametrize(("runtime", "code"), NAMED, ids=[f"{r.name}-{i}" for i, (r, _) in enumerate(NAMED)])
async def test_named_entry_runs(engine: Engine, runtime: Runtime, code: str) -> None:
    """A program whose class or module has its own name (HelloWorld, Solution, -module(anything)) runs."""
    result = await engine_run(engine, runtime.name, code)
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.COMPLETED, 0, "hello\n"), (
        result
    )


@ALL
async def test_stdin_echoed(engine: Engine, runtime: Runtime) -> None:
    """Copies standard input to standard output unchanged."""
    stdin = "line one\nline two\n"
    result = await engine_run(engine, runtime.name, runtime.conformance.echo_stdin, stdin=stdin)
    assert (result.stdout, result.exit_code) == (stdin, 0), result


@ALL
async def test_environment_variable_read(engine: Engine, runtime: Runtime) -> None:
    """Reads a variable the request set."""
    result = await engine_run(
        engine, runtime.name, runtime.conformance.read_env, environment={"SANDBOXD_CONFORMANCE": "conformant"}
    )
    assert (result.stdout, result.exit_code) == ("conformant\n", 0), result


@ALL
async def test_exit_code_3(engine: Engine, runtime: Runtime) -> None:
    """Exit status 3 comes back as 3, status completed."""
    result = await engine_run(engine, runtime.name, runtime.conformance.exit_3)
    assert (result.exit_code, result.status) == (3, ExecutionStatus.COMPLETED), result


@ALL
async def test_utf8_round_trip(engine: Engine, runtime: Runtime) -> None:
    """Non-ASCII text in the source comes out unchanged."""
    result = await engine_run(engine, runtime.name, runtime.conformance.utf8)
    assert result.stdout == "héllo wörld ✓ 日本\n", result


@pytest.mark.parametrize("runtime", COMPILED, ids=[r.name for r in COMPILED])
async def test_compile_error(engine: Engine, runtime: Runtime) -> None:
    """Source that does not compile gives status compile_error and the compiler's message."""
    assert runtime.conformance.compile_error is not None
    result = await engine_run(engine, runtime.name, runtime.conformance.compile_error)
    assert (result.status, result.exit_code) == (ExecutionStatus.COMPILE_ERROR, -1), result
    compiler_output, note = result.stderr.rstrip("\n").rsplit("\n", 1)
    assert re.fullmatch(r"sandboxd: compilation failed with exit status [1-9]\d*", note), result
    # sandboxd's own note says nothing about the source: the compiler's message names its file.
    assert runtime.program_for(runtime.conformance.compile_error).source_file in compiler_output, result


@ALL
async def test_syntax_error(engine: Engine, runtime: Runtime) -> None:
    """Source that does not parse is a compile error: the compiler's or interpreter's message, nothing run.

    Every snippet prints "before" ahead of its error: only a language without a parse step
    of its own (kind = "none") gets that far, and its error stays the program's own.
    """
    code = runtime.conformance.syntax_error
    result = await engine_run(engine, runtime.name, code)
    if runtime.syntax_check is not None and runtime.syntax_check.kind is SyntaxCheckKind.NONE:
        assert (result.status, result.stdout) == (ExecutionStatus.COMPLETED, "before\n"), result
        assert result.exit_code not in (0, -1), result
        assert result.stderr.strip(), result
        assert "sandboxd:" not in result.stderr, result
        return
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.COMPILE_ERROR, -1, ""), result
    message, note = result.stderr.rstrip("\n").rsplit("\n", 1)
    assert _NOT_PARSED_NOTE.fullmatch(note), result
    # The message is the language's own, and names the source file (sandboxd's note does not).
    assert runtime.program_for(code).source_file in message, result


@ALL
async def test_uncaught_error(engine: Engine, runtime: Runtime) -> None:
    """An uncaught runtime error stays the program's: completed, its own non-zero exit, its own message."""
    result = await engine_run(engine, runtime.name, runtime.conformance.runtime_error)
    assert result.status == ExecutionStatus.COMPLETED, result
    assert result.exit_code not in (0, -1)
    assert result.stderr.strip()
    # Nothing of a syntax check shows: no note, no frame or path of the check in a traceback.
    assert "sandboxd:" not in result.stderr, result
    assert "/dev/.sandboxd" not in result.stderr, result


@ALL
async def test_infinite_loop_times_out(engine: Engine, runtime: Runtime) -> None:
    """An endless loop ends with status timeout at the requested timeout."""
    result = await engine_run(engine, runtime.name, runtime.conformance.infinite_loop, timeout=2)
    assert (result.status, result.exit_code) == (ExecutionStatus.TIMEOUT, -1), result


@pytest.mark.parametrize("runtime", WITH_PACKAGES, ids=[r.name for r in WITH_PACKAGES])
async def test_declared_packages_import(engine: Engine, runtime: Runtime) -> None:
    """Every language package the runtime's [build] declares imports, at its pinned version."""
    assert runtime.conformance.packages is not None
    declared = {**runtime.build.pip, **runtime.build.npm}
    result = await engine_run(engine, runtime.name, runtime.conformance.packages, stdin=json.dumps(declared))
    assert (result.status, result.exit_code) == (ExecutionStatus.COMPLETED, 0), result
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert found == declared, result
