"""Every example in the product document (shared/seed/batch-execution.txt), against the server."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from tests.helpers import Client, batch, submit, wait_for

pytestmark = pytest.mark.integration

GO_8 = 'package main\nimport "fmt"\nfunc main() { fmt.Println(4 + 4) }'


async def test_multi_language_batch(http: Client, headers: dict[str, str]) -> None:
    """Python, JavaScript and Go in one batch print 4, 6 and 8, in order."""
    status, results = await batch(
        http,
        headers,
        [
            {"code": "print(2 + 2)", "language": "python"},
            {"code": "console.log(3 + 3)", "language": "javascript"},
            {"code": GO_8, "language": "go"},
        ],
    )
    assert status == 200
    assert [(r["stdout"], r["exit_code"], r["language"]) for r in results] == [
        ("4\n", 0, "python"),
        ("6\n", 0, "javascript"),
        ("8\n", 0, "go"),
    ]
    assert len({r["execution_id"] for r in results}) == 3
    assert all(r["session_id"] is None for r in results)


async def test_test_cases_batch(http: Client, headers: dict[str, str]) -> None:
    """The same function over three inputs, tracked by one session id."""
    code = "def add(a, b):\n    return a + b\nprint(add({}))"
    items = [
        {"code": code.format(args), "language": "python", "session_id": "test-session-1"}
        for args in ("2, 3", "-1, 1", "0, 0")
    ]
    status, results = await batch(http, headers, items)
    assert status == 200
    assert [r["stdout"] for r in results] == ["5\n", "0\n", "0\n"]
    assert {r["session_id"] for r in results} == {"test-session-1"}


async def test_different_configurations_batch(http: Client, headers: dict[str, str]) -> None:
    """Each item's own environment and timeout are honoured."""
    code = 'import os\nprint(os.environ["ENV"])'
    status, results = await batch(
        http,
        headers,
        [
            {"code": code, "language": "python", "environment": {"ENV": "development"}, "timeout": 10},
            {"code": code, "language": "python", "environment": {"ENV": "production"}, "timeout": 5},
        ],
    )
    assert status == 200
    assert [r["stdout"] for r in results] == ["development\n", "production\n"]


async def test_individual_failure_does_not_fail_the_batch(http: Client, headers: dict[str, str]) -> None:
    """One item failing gives exit_code -1 for it alone; the items around it run.

    The document's example: a JavaScript item with a syntax error ends with exit_code -1
    and Node's SyntaxError in stderr, as a compiled language's compile error does.
    """
    status, results = await batch(
        http,
        headers,
        [
            {"code": "print('Success')", "language": "python"},
            {"code": "console.log('before');\nconsole.log(1));", "language": "javascript"},
            {"code": "package main\nfunc main() { syntax error }", "language": "go"},
            {"code": "while True: pass", "language": "python", "timeout": 1},
            {"code": "print('Success')", "language": "python", "stdin": "ignored"},
        ],
    )
    assert status == 200
    assert [(r["stdout"], r["exit_code"], r["status"]) for r in results] == [
        ("Success\n", 0, "completed"),
        ("", -1, "compile_error"),
        ("", -1, "compile_error"),
        ("", -1, "timeout"),
        ("Success\n", 0, "completed"),
    ]
    assert "SyntaxError: Unexpected token" in results[1]["stderr"], results[1]
    assert results[1]["language"] == "javascript"


async def test_batch_size_exceeded(http: Client, headers: dict[str, str]) -> None:
    """Eleven items: 400 with the document's exact detail."""
    status, body = await batch(http, headers, [{"code": "print(1)", "language": "python"}] * 11)
    assert (status, body) == (400, {"detail": "Maximum 10 executions allowed in a batch"})


async def test_invalid_language_fails_the_whole_batch(http: Client, headers: dict[str, str]) -> None:
    """Any unsupported language: 400 with the document's detail, and nothing runs."""
    items = [
        {"code": "print('should not run')", "language": "python", "session_id": "never-ran"},
        {"code": "x", "language": "invalid"},
    ]
    status, body = await batch(http, headers, items)
    assert (status, body) == (400, {"detail": "Unsupported language: invalid"})
    listing = await http.get("/api/v1/sessions/never-ran/executions", headers=headers)
    assert (await listing.json())["executions"] == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([], "Batch must contain at least one execution"),
        (
            {"code": "print(1)", "language": "python"},
            "Request body must be a JSON array of execution requests",
        ),
        (
            [{"code": "print(1)", "language": "python"}, {"language": "python", "timeout": "x"}],
            "item 1: code: required field missing; item 1: timeout: expected an integer",
        ),
        (
            [{"code": "1", "language": "python", "timeout": 99}],
            "item 0: timeout: must be at most 60 seconds for python",
        ),
    ],
)
async def test_invalid_batches(http: Client, headers: dict[str, str], body: Any, detail: str) -> None:
    """Empty, non-array and invalid items give 400 naming the item's index and field."""
    status, result = await batch(http, headers, body)
    assert (status, result) == (400, {"detail": detail})


async def test_batch_runs_sequentially(http: Client, headers: dict[str, str]) -> None:
    """Three items sleeping 1 s each take at least 3 s in all, and run in order."""
    code = "import time\nprint(time.time())\ntime.sleep(1)"
    started = time.monotonic()
    status, results = await batch(http, headers, [{"code": code, "language": "python"}] * 3)
    assert status == 200
    assert time.monotonic() - started >= 3
    starts = [float(r["stdout"]) for r in results]
    assert starts == sorted(starts)
    assert starts[2] - starts[0] >= 2


async def test_async_executions_run_in_parallel(http: Client, headers: dict[str, str]) -> None:
    """Three async executions sleeping 3 s each all run at one moment, by their own clocks."""
    code = "import time\nprint(time.time())\ntime.sleep(3)\nprint(time.time())\nprint('slept')"
    accepted = [await submit(http, headers, code=code, language="python") for _ in range(3)]
    results = [await wait_for(http, headers, execution_id) for execution_id in accepted]
    assert [(result["status"], result["stdout"].split()[-1]) for result in results] == [
        ("completed", "slept")
    ] * 3
    spans = [[float(t) for t in result["stdout"].split()[:2]] for result in results]
    # Run one after another, the last would start after the first ended.
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


PYTHON_CLIENT = """
import requests

API_URL = "http://localhost:8002/api/v1"
API_KEY = "your-api-key"

# Prepare batch of executions
batch = [
    {
        "code": "print('Python')",
        "language": "python"
    },
    {
        "code": "console.log('JavaScript')",
        "language": "javascript"
    },
    {
        "code": "puts 'Ruby'",
        "language": "ruby"
    }
]

# Execute batch
response = requests.post(
    f"{API_URL}/execute/batch",
    headers={
        "X-API-Key": API_KEY,
        "Content-Type": "application/json"
    },
    json=batch
)

# Process results
results = response.json()
for i, result in enumerate(results):
    print(f"\\nExecution {i+1} ({result['language']}):")
    print(f"  Output: {result['stdout'].strip()}")
    print(f"  Time: {result['execution_time']}s")
    print(f"  Exit Code: {result['exit_code']}")
"""


async def test_python_client_example(http: Client, api_key: str) -> None:
    """The document's Python client, pointed at this server, prints each language's output."""
    script = PYTHON_CLIENT.replace("http://localhost:8002", str(http.make_url("")).rstrip("/")).replace(
        "your-api-key", api_key
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    lines = [line.strip() for line in stdout.decode().splitlines() if line.strip()]
    assert lines[0::4] == ["Execution 1 (python):", "Execution 2 (javascript):", "Execution 3 (ruby):"]
    assert lines[1::4] == ["Output: Python", "Output: JavaScript", "Output: Ruby"]
    assert lines[3::4] == ["Exit Code: 0"] * 3
