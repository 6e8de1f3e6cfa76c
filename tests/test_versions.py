"""A request's version: how it is matched, validated and listed, and that it runs where it says."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from sandboxd.models import ExecutionRequest
from sandboxd.runtimes import DEFAULT_VERSION_PATTERN, Runtime, RuntimeRegistry, version_matches
from sandboxd.validation import ValidationError, structure
from tests.helpers import shipped_runtimes


def _python(name: str, **changes: Any) -> Runtime:
    """The shipped python runtime under another name (no aliases), with ``changes``."""
    python = shipped_runtimes().get("python")
    assert python is not None
    return attrs.evolve(python, name=name, aliases=(), image=f"example/{name}:1", **changes)


@pytest.mark.parametrize(
    ("requested", "known", "matches"),
    [
        ("3", "3.11.2", True),
        ("3.11", "3.11.2", True),
        ("3.11.2", "3.11.2", True),
        ("3.1", "3.13.5", False),
        ("3.1", "3.1.4", True),
        ("3.11.2.1", "3.11.2", False),
        ("3.12", "3.11.2", False),
        ("03.11", "3.11.2", True),
        ("1.24", "1.24.4", True),
    ],
)
def test_a_version_matches_by_whole_components(requested: str, known: str, matches: bool) -> None:
    """The request's version is a prefix of the known one, number by number ("3.1" is not 3.13)."""
    assert version_matches(requested, known) is matches


@pytest.mark.parametrize(
    ("line", "pattern", "number"),
    [
        ("Python 3.13.5", DEFAULT_VERSION_PATTERN, "3.13.5"),
        ("go version go1.24.4 linux/amd64", DEFAULT_VERSION_PATTERN, "1.24.4"),
        ("v20.19.2", DEFAULT_VERSION_PATTERN, "20.19.2"),
        ("Python 3.11.2\nsecond line 9.9", DEFAULT_VERSION_PATTERN, "3.11.2"),
        ("no number here", DEFAULT_VERSION_PATTERN, None),
        (None, DEFAULT_VERSION_PATTERN, None),
        ("This is perl 5, version 36, subversion 0 (v5.36.0)", r"\(v([0-9.]+)\)", "5.36.0"),
        ("rustc 1.63.0", r"rustc ([a-z]+)", None),
    ],
)
def test_the_version_number_comes_from_the_first_line(
    line: str | None, pattern: str, number: str | None
) -> None:
    """version_pattern's group picks the number out of the version line; what is no number is none."""
    assert _python("x", version_pattern=pattern).parse_version(line) == number


def test_the_default_runtime_is_preferred_then_the_others_by_name() -> None:
    """Of the runtimes whose version matches, the language's default wins, then the first by name."""
    python = _python("python")
    later, earlier = _python("pythonb", language="python"), _python("pythona", language="python")
    registry = RuntimeRegistry((later, python, earlier))
    assert registry.of_language("python") == [python, earlier, later]
    known = {"python": "3.13.5", "pythona": "3.11.9", "pythonb": "3.11.2"}.get
    assert registry.matching("python", "3", lambda runtime: known(runtime.name)) is python
    assert registry.matching("python", "3.11", lambda runtime: known(runtime.name)) is earlier
    assert registry.matching("python", "3.11.2", lambda runtime: known(runtime.name)) is later
    assert registry.matching("python", "3.9", lambda runtime: known(runtime.name)) is None
    assert registry.matching("python", "3", lambda runtime: None) is None


@pytest.mark.parametrize("version", ["3.x", "3.", ".3", "3.11.2.1.0", "1" * 33, "", " 3.11", "3.11\n", "٣"])
def test_an_invalid_version_names_the_field(version: str) -> None:
    """A version that is no dotted number of 1 to 4 parts (32 characters at most) is refused."""
    with pytest.raises(ValidationError) as raised:
        structure({"code": "1", "language": "python", "version": version}, ExecutionRequest)
    assert raised.value.problems[0].startswith("version: must be a version number such as 3.11")


def test_a_version_must_be_a_string() -> None:
    """A number is not a version: 3.10 would be 3.1."""
    with pytest.raises(ValidationError) as raised:
        structure({"code": "1", "language": "python", "version": 3.10}, ExecutionRequest)
    assert raised.value.problems == ["version: expected a string"]
