"""The request model's validation, through the one converter."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxd.models import ExecutionRequest
from sandboxd.validation import ValidationError, structure


def problems(data: Any) -> list[str]:
    """The problems structuring ``data`` reports."""
    with pytest.raises(ValidationError) as caught:
        structure(data, ExecutionRequest)
    return caught.value.problems


def test_minimal_request() -> None:
    """Code and language suffice; the rest defaults to None."""
    request = structure({"code": "print(1)", "language": "python"}, ExecutionRequest)
    assert request == ExecutionRequest(code="print(1)", language="python")


def test_no_coercion() -> None:
    """Numbers are not strings, booleans are not integers, strings are not lists."""
    assert problems({"code": 1, "language": "python"}) == ["code: expected a string"]
    assert problems({"code": "x", "language": "python", "timeout": True}) == ["timeout: expected an integer"]
    assert problems({"code": "x", "language": "python", "timeout": 1.5}) == ["timeout: expected an integer"]


def test_all_problems_at_once() -> None:
    """Several bad fields give one line each."""
    found = problems({"language": 3, "stdin": 4, "extra": 1, "other": 2})
    assert "code: required field missing" in found
    assert "language: expected a string" in found
    assert "stdin: expected a string" in found
    assert "unknown fields: extra, other" in found


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("environment", {f"V{i}": "x" for i in range(65)}, "environment: must have at most 64 variables"),
        ("environment", {"A": "x" * (33 << 10)}, "environment: must be at most 32768 bytes in all"),
        ("environment", {"A": "a\0b"}, "environment: values must not contain NUL: A"),
        ("session_id", "x" * 129, "session_id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
        ("session_id", "", "session_id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
        ("timeout", -1, "timeout: must be a positive number of seconds"),
    ],
)
def test_bounds(field: str, value: Any, message: str) -> None:
    """Every bounded field reports its own name when out of bounds."""
    assert problems({"code": "x", "language": "python", field: value}) == [message]
