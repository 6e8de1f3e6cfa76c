"""In-process syntax checks: a program keeps its semantics, and no exit status means "does not parse".

The conformance suite shows, for every runtime, that a syntax error is a compile error and a
runtime error is not. These show what the in-process checks of the two most used runtimes
leave as it was: the program's name, arguments and module, its tracebacks, and its exit status,
which never says "does not parse", whatever it is.
"""

from __future__ import annotations

import pytest

from sandboxd.engine.engine import Engine
from sandboxd.models import ExecutionStatus
from tests.helpers import engine_run

pytestmark = pytest.mark.integration


async def test_python_program_runs_as_main_with_its_own_argv(engine: Engine) -> None:
    """The program is __main__ with its own file, argv and path; a traceback starts in it."""
    code = (
        "import sys\n"
        "print(__name__, __file__, sys.argv, sys.path[0], sys.modules['__main__'].__file__)\n"
        "def fail():\n"
        "    raise KeyError('boom')\n"
        "fail()\n"
    )
    result = await engine_run(engine, "python", code)
    assert (result.status, result.exit_code) == (ExecutionStatus.COMPLETED, 1), result
    assert result.stdout == "__main__ /workspace/main.py ['main.py'] /workspace /workspace/main.py\n"
    # Python 3.11 and newer may underline the failing expression (a line of ~ and ^ only).
    lines = [line for line in result.stderr.splitlines() if line.strip(" ~^")]
    assert lines == [
        "Traceback (most recent call last):",
        '  File "/workspace/main.py", line 5, in <module>',
        "    fail()",
        '  File "/workspace/main.py", line 4, in fail',
        "    raise KeyError('boom')",
        "KeyError: 'boom'",
    ]


async def test_python_program_cannot_report_a_syntax_error_for_itself(engine: Engine) -> None:
    """The status pipe is closed before the program runs: writing to fd 3 fails, its exit stays its own."""
    code = (
        "import os, sys\n"
        "try:\n"
        "    os.write(3, b'syntax')\n"
        "except OSError as error:\n"
        "    print(error.strerror)\n"
        "sys.exit(1)\n"
    )
    result = await engine_run(engine, "python", code)
    assert (result.status, result.exit_code, result.stdout) == (
        ExecutionStatus.COMPLETED,
        1,
        "Bad file descriptor\n",
    ), result


@pytest.mark.parametrize("status", [1, 2, 255])
async def test_no_exit_status_means_a_syntax_error(engine: Engine, status: int) -> None:
    """A program that parses ends completed with any status, even one its interpreter gives a syntax error."""
    result = await engine_run(engine, "python", f"import sys\nprint('ran')\nsys.exit({status})")
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.COMPLETED, status, "ran\n")


async def test_javascript_program_stays_the_main_module(engine: Engine) -> None:
    """The check's snapshot leaves require.main, argv and execArgv as Node gives them; fd 3 is closed."""
    code = (
        "const fs = require('fs');\n"
        "let fd3 = 'open';\n"
        "try { fs.writeSync(3, 'syntax'); } catch (error) { fd3 = error.code; }\n"
        "console.log(require.main === module, process.argv.slice(1), process.execArgv, fd3);\n"
        "process.exitCode = 1;\n"
    )
    result = await engine_run(engine, "javascript", code)
    assert (result.status, result.exit_code) == (ExecutionStatus.COMPLETED, 1), result
    assert result.stdout == "true [ '/workspace/main.js' ] [] EBADF\n"


async def test_a_syntax_error_in_a_module_the_program_requires_is_its_own(engine: Engine) -> None:
    """Only the program's own source is checked: a module that fails to parse later is a runtime error."""
    code = (
        "require('fs').writeFileSync('/tmp/broken.js', 'module.exports = (');\n"
        "console.log('before');\n"
        "require('/tmp/broken.js');\n"
    )
    result = await engine_run(engine, "javascript", code)
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.COMPLETED, 1, "before\n")
    assert "SyntaxError" in result.stderr


async def test_javascript_forks_start_as_plain_node(engine: Engine) -> None:
    """A process the program forks gets no snapshot and no check: its fd 3 (the IPC channel) works."""
    code = (
        "const { fork } = require('child_process');\n"
        "if (process.argv[2] === 'child') { process.send(process.execArgv); process.exit(0); }\n"
        "fork(__filename, ['child']).on('message', (argv) => console.log('child', JSON.stringify(argv)));\n"
    )
    result = await engine_run(engine, "javascript", code)
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.COMPLETED, 0, "child []\n"), (
        result
    )


@pytest.mark.parametrize(
    "code",
    [
        "import { join } from 'path';\nconsole.log(join('a', 'b'));\nthrow new Error('boom');\n",
        "const joined = await Promise.resolve('a/b');\nconsole.log(joined);\nprocess.exit(3);\n",
    ],
)
async def test_an_es_module_is_node_s_to_compile(engine: Engine, code: str) -> None:
    """A script Node runs as an ES module (import, await at top level) is no syntax error of ours."""
    result = await engine_run(engine, "javascript", code)
    assert (result.status, result.stdout) == (ExecutionStatus.COMPLETED, "a/b\n"), result
    assert result.exit_code in (1, 3), result
