"""Test cases: ``expected_output`` on a request, ``passed`` on its result."""

from __future__ import annotations

import pytest

from sandboxd.models import Compare
from tests.helpers import Client, batch, execute, run, submit, wait_for

pytestmark = pytest.mark.integration

ADD = "def add(a, b):\n    return a + b\nprint(add({a}, {b}))"


@pytest.mark.parametrize(
    ("actual", "expected", "rule", "matches"),
    [
        ("5\n", "5", Compare.TRIM, True),
        ("5  \n\n\n", "5\n", Compare.TRIM, True),
        ("a \r\nb\t\n", "a\nb", Compare.TRIM, True),
        ("\n5\n", "5", Compare.TRIM, False),  # leading lines count
        ("5 5\n", "55", Compare.TRIM, False),  # so do spaces inside a line
        ("5\n", "5\n", Compare.EXACT, True),
        ("5\n", "5", Compare.EXACT, False),
        ("5 \n", "5\n", Compare.EXACT, False),
    ],
)
def test_comparison_rules(actual: str, expected: str, rule: Compare, matches: bool) -> None:
    """The default rule ignores whitespace at line ends and trailing newlines; exact compares every byte."""
    assert rule.matches(actual, expected) is matches


async def test_passed_is_null_when_nothing_is_expected(http: Client, headers: dict[str, str]) -> None:
    """A request without expected_output gets passed: null."""
    result = await run(http, headers, "print(1)")
    assert result["passed"] is None


async def test_matching_output_passes(http: Client, headers: dict[str, str]) -> None:
    """Output equal to the expectation (trailing newline aside) passes; other output does not."""
    good = await run(http, headers, "print(' 5')", expected_output=" 5")
    assert (good["status"], good["passed"]) == ("completed", True)
    bad = await run(http, headers, "print(6)", expected_output="5")
    assert (bad["status"], bad["passed"]) == ("completed", False)
    assert bad["stdout"] == "6\n"


async def test_exact_comparison(http: Client, headers: dict[str, str]) -> None:
    """With compare: exact, a missing trailing newline is a difference."""
    loose = await run(http, headers, "print(5)", expected_output="5", compare="exact")
    assert loose["passed"] is False
    exact = await run(http, headers, "print(5)", expected_output="5\n", compare="exact")
    assert exact["passed"] is True


async def test_a_failed_run_never_passes(http: Client, headers: dict[str, str]) -> None:
    """The right output from a program that then fails, or is killed, does not pass."""
    crashed = await run(http, headers, "print(5)\nraise SystemExit(2)", expected_output="5")
    assert (crashed["exit_code"], crashed["passed"]) == (2, False)
    timed_out = await run(
        http, headers, "print(5, flush=True)\nwhile True: pass", expected_output="5", timeout=1
    )
    assert (timed_out["status"], timed_out["passed"]) == ("timeout", False)


async def test_product_document_test_cases_batch(http: Client, headers: dict[str, str]) -> None:
    """The document's "Test Cases Batch" with expected_output on each item: each says whether it passed."""
    cases = [(2, 3, "5"), (-1, 1, "0"), (0, 0, "1")]
    items = [
        {
            "code": ADD.format(a=a, b=b),
            "language": "python",
            "session_id": "test-session-1",
            "expected_output": expected,
        }
        for a, b, expected in cases
    ]
    status, results = await batch(http, headers, items)
    assert status == 200, results
    assert [r["stdout"] for r in results] == ["5\n", "0\n", "0\n"]
    assert [r["passed"] for r in results] == [True, True, False]
    response = await http.get("/api/v1/sessions/test-session-1/executions", headers=headers)
    listed = {item["execution_id"]: item["passed"] for item in (await response.json())["executions"]}
    assert [listed[r["execution_id"]] for r in results] == [True, True, False]


async def test_asynchronous_results_keep_passed(http: Client, headers: dict[str, str]) -> None:
    """An asynchronous execution's stored result says whether it passed."""
    execution_id = await submit(http, headers, code="print('ok')", language="python", expected_output="ok")
    result = await wait_for(http, headers, execution_id)
    assert (result["status"], result["passed"]) == ("completed", True)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"expected_output": 5}, "expected_output: expected a string"),
        ({"expected_output": "5", "compare": "fuzzy"}, "compare: must be one of: trim, exact"),
        ({"expected_output": "x" * ((1 << 20) + 1)}, "expected_output: must be at most 1048576 bytes"),
    ],
)
async def test_invalid_expectations_are_400(
    http: Client, headers: dict[str, str], body: dict[str, object], detail: str
) -> None:
    """A malformed expectation is refused, naming the field."""
    status, answer = await execute(http, headers, code="print(5)", language="python", **body)
    assert status == 400
    assert answer["detail"] == detail
