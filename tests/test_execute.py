"""POST /api/v1/execute and friends, end to end against real containerd and runsc."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import attrs
import pytest

from sandboxd.engine.engine import Engine
from sandboxd.models import ExecutionRequest, ExecutionStatus
from tests.helpers import REQUEST_SLACK, SLACK, Client, execute, execute_plan

pytestmark = pytest.mark.integration

GO_HELLO = 'package main\nimport "fmt"\nfunc main() { fmt.Println(4 + 4) }'


@pytest.mark.parametrize(
    ("language", "code", "stdout"),
    [
        ("python", "print(2 + 2)", "4\n"),
        ("javascript", "console.log(3 + 3)", "6\n"),
        ("go", GO_HELLO, "8\n"),
        ("ruby", "puts 'Ruby'", "Ruby\n"),
    ],
)
async def test_product_document_examples(
    http: Client, headers: dict[str, str], language: str, code: str, stdout: str
) -> None:
    """Each language prints what the product document's examples show."""
    status, result = await execute(http, headers, code=code, language=language)
    assert status == 200, result
    assert result["stdout"] == stdout
    assert result["stderr"] == ""
    assert result["exit_code"] == 0
    assert result["status"] == "completed"
    assert result["language"] == language
    assert result["session_id"] is None
    assert 0 < result["execution_time"] < 60  # the most any runtime's timeout may be
    assert len(result["execution_id"]) == 36


async def test_result_has_exactly_the_documented_fields(http: Client, headers: dict[str, str]) -> None:
    """A result carries the document's fields plus status, usage and grading, and echoes the session id."""
    status, result = await execute(
        http, headers, code="print(1)", language="python", session_id="test-session-1"
    )
    assert status == 200
    assert set(result) == {
        "execution_id", "stdout", "stderr", "exit_code", "execution_time", "language", "session_id", "status",
        "cpu_time", "memory_peak", "passed", "output_files",
    }  # fmt: skip
    assert result["session_id"] == "test-session-1"
    assert 0 < result["cpu_time"] < 10
    assert 1 << 20 < result["memory_peak"] < 256 << 20


async def test_alias_reports_canonical_language(http: Client, headers: dict[str, str]) -> None:
    """A request by alias runs the runtime and reports its canonical name."""
    status, result = await execute(http, headers, code="console.log('hi')", language="node")
    assert status == 200
    assert (result["stdout"], result["language"]) == ("hi\n", "javascript")


async def test_stdin_reaches_the_program(http: Client, headers: dict[str, str]) -> None:
    """The request's stdin is the program's standard input, ending in end-of-file."""
    code = "import sys\ndata = sys.stdin.read()\nprint(len(data), data.upper(), end='')"
    status, result = await execute(http, headers, code=code, language="python", stdin="hello\nworld\n")
    assert status == 200
    assert result["stdout"] == "12 HELLO\nWORLD\n"


async def test_stdio_can_be_opened_by_path(http: Client, headers: dict[str, str]) -> None:
    """/dev/stdin and /dev/stdout open as they do outside a sandbox: the pipes are the program user's."""
    code = (
        "import os\nprint(os.fstat(0).st_uid, flush=True)\n"
        "with open('/dev/stdout', 'w') as out:\n    out.write(open('/dev/stdin').read())"
    )
    status, result = await execute(http, headers, code=code, language="python", stdin="by path\n")
    assert status == 200
    assert result["stdout"] == "65534\nby path\n", result


async def test_coreutils_list_files_in_long_form(http: Client, headers: dict[str, str]) -> None:
    """`ls -l` works: coreutils' statx calls are ones the sandbox's runsc answers (20221219 gave EINVAL)."""
    code = "echo data > /workspace/file.txt && ls -l /workspace/file.txt"
    status, result = await execute(http, headers, code=code, language="bash")
    assert status == 200
    assert result["exit_code"] == 0, result
    mode, *_, name = result["stdout"].split()
    assert mode.startswith("-rw-"), result
    assert name == "/workspace/file.txt", result


async def test_program_without_stdin_reads_end_of_file(http: Client, headers: dict[str, str]) -> None:
    """Without stdin, reading standard input returns at once instead of hanging."""
    status, result = await execute(http, headers, code="puts STDIN.read.inspect", language="ruby", timeout=5)
    assert status == 200
    assert (result["stdout"], result["status"]) == ('""\n', "completed")


async def test_environment_reaches_the_program(http: Client, headers: dict[str, str]) -> None:
    """Request environment variables are set in the program's environment."""
    code = 'import os\nprint(os.environ["ENV"], os.environ["OTHER"])'
    env = {"ENV": "production", "OTHER": "x y"}
    status, result = await execute(http, headers, code=code, language="python", environment=env)
    assert status == 200
    assert result["stdout"] == "production x y\n"


async def test_exit_code_comes_back(http: Client, headers: dict[str, str]) -> None:
    """A program's own exit status is the result's exit_code."""
    status, result = await execute(http, headers, code="process.exit(3)", language="javascript")
    assert status == 200
    assert (result["exit_code"], result["status"]) == (3, "completed")


async def test_uncaught_error_is_a_completed_nonzero_exit(http: Client, headers: dict[str, str]) -> None:
    """An exception is the program's failure, reported with its traceback and exit status."""
    status, result = await execute(http, headers, code="raise ValueError('boom')", language="python")
    assert status == 200
    assert result["exit_code"] == 1
    assert "ValueError: boom" in result["stderr"]


async def test_busy_loop_times_out(http: Client, headers: dict[str, str]) -> None:
    """A busy loop with timeout 2 ends as a timeout at 2 s (and a loaded machine's margin); output is kept."""
    code = "print('started')\nwhile True:\n    pass"
    started = time.monotonic()
    status, result = await execute(http, headers, code=code, language="python", timeout=2)
    wall = time.monotonic() - started
    assert status == 200
    assert (result["status"], result["exit_code"]) == ("timeout", -1)
    assert result["stdout"] == "started\n"
    assert result["stderr"].endswith("sandboxd: execution timed out after 2 s\n")
    assert 2 <= result["execution_time"] < 2 + SLACK  # not python's default timeout of 10 s
    assert wall < 2 + REQUEST_SLACK


async def test_compile_error(http: Client, headers: dict[str, str]) -> None:
    """Go that does not compile gives compile_error with the compiler's message."""
    code = "package main\nfunc main() { undefinedThing() }"
    status, result = await execute(http, headers, code=code, language="go")
    assert status == 200
    assert (result["status"], result["exit_code"], result["stdout"]) == ("compile_error", -1, "")
    assert "undefined: undefinedThing" in result["stderr"]
    assert "sandboxd: compilation failed" in result["stderr"]


async def test_memory_limit(engine: Engine) -> None:
    """Allocating 1 GiB under a 128 MiB limit ends with status memory_limit."""
    plan = engine.plan(ExecutionRequest(code="x = bytearray(1 << 30)\nprint('survived')", language="python"))
    small = attrs.evolve(plan.runtime, limits=attrs.evolve(plan.runtime.limits, memory_mib=128))
    result = await execute_plan(engine, attrs.evolve(plan, runtime=small))
    assert (result.status, result.exit_code) == (ExecutionStatus.MEMORY_LIMIT, -1)
    assert "survived" not in result.stdout
    assert result.stderr.endswith("sandboxd: memory limit of 128 MiB exceeded\n")


async def test_program_exiting_137_is_not_out_of_memory(http: Client, headers: dict[str, str]) -> None:
    """A program that exits 137 by itself is reported as such, not as a memory limit."""
    status, result = await execute(http, headers, code="import sys; sys.exit(137)", language="python")
    assert status == 200
    assert (result["status"], result["exit_code"]) == ("completed", 137)


async def test_no_network(http: Client, headers: dict[str, str]) -> None:
    """A TCP connection to the daemon's own loopback port fails inside the sandbox."""
    port = http.server.port
    code = (
        "import socket\n"
        f"for port in ({port}, 80):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=2)\n"
        "        print('connected', port)\n"
        "    except OSError as error:\n"
        "        print('refused', port, type(error).__name__)\n"
    )
    status, result = await execute(http, headers, code=code, language="python")
    assert status == 200
    assert result["stdout"].splitlines() == [
        f"refused {port} ConnectionRefusedError",
        "refused 80 ConnectionRefusedError",
    ]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_huge_output_is_truncated_without_daemon_memory_growth(
    http: Client, headers: dict[str, str]
) -> None:
    """Printing 50 MB gives 1 MiB of output, status output_limit, and the daemon grows by under 16 MB.

    This process is server and client at once: the 1 MiB kept lives in it as bytes, text,
    JSON and the client's copy, several MB before the allocator hands anything back.
    """
    code = "import sys\nchunk = 'x' * 65536 + '\\n'\nfor _ in range(800):\n    sys.stdout.write(chunk)"
    await execute(http, headers, code="print('warm-up')", language="python")
    before = _rss_bytes()
    status, result = await execute(http, headers, code=code, language="python")
    growth = _rss_bytes() - before
    assert status == 200
    assert (result["status"], result["exit_code"]) == ("output_limit", -1)
    assert len(result["stdout"]) == 1 << 20
    assert "sandboxd: output limit" in result["stderr"]
    assert growth < 16 << 20, f"daemon RSS grew by {growth} bytes"


async def test_single_huge_write_is_not_lost(http: Client, headers: dict[str, str]) -> None:
    """One 2 MiB write (which gVisor may accept only in part) still reaches the cap: nothing silently lost."""
    code = "import sys\nsys.stdout.write('y' * (2 << 20))"
    status, result = await execute(http, headers, code=code, language="python")
    assert status == 200
    assert result["status"] == "output_limit"
    assert len(result["stdout"]) == 1 << 20


async def test_invalid_utf8_output_stays_valid_json(http: Client, headers: dict[str, str]) -> None:
    """Bytes that are not UTF-8 come back as replacement characters."""
    code = "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"
    status, result = await execute(http, headers, code=code, language="python")
    assert status == 200
    assert result["stdout"] == "ok \ufffd\ufffd end\n"


async def test_concurrent_executions(http: Client, headers: dict[str, str]) -> None:
    """Several executions at once each get their own sandbox and their own output."""
    results = await asyncio.gather(
        *(execute(http, headers, code=f"print({i} * 2)", language="python") for i in range(6))
    )
    assert [r["stdout"] for _, r in results] == [f"{i * 2}\n" for i in range(6)]
