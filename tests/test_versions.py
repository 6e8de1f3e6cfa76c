"""A request's version: how it is matched, validated and listed, and that it runs where it says."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from sandboxd.engine.engine import Engine, UnsupportedVersionError
from sandboxd.models import ExecutionRequest
from sandboxd.runtimes import DEFAULT_VERSION_PATTERN, Runtime, RuntimeRegistry, version_matches
from sandboxd.validation import ValidationError, structure
from tests.helpers import Client, batch, execute, images_of, shipped_runtimes, submit, wait_for

# Prints the interpreter's version as the languages endpoint lists numbers: 3.11.2.
PRINT_VERSION = "import sys\nprint('.'.join(map(str, sys.version_info[:3])))"
PRINT_LINE = "import sys\nprint(sys.version_info[:2])"


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


# -- against the real daemon -------------------------------------------------------------


async def _listing(http: Client, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """GET /api/v1/languages, by runtime name."""
    response = await http.get("/api/v1/languages", headers=headers)
    assert response.status == 200
    return {item["runtime"]: item for item in await response.json()}


def _first_matching(listing: dict[str, dict[str, Any]], language: str, version: str) -> str:
    """The runtime the listing says a request for ``language`` at ``version`` gets."""
    ordered = sorted(
        (item for item in listing.values() if item["language"] == language),
        key=lambda item: (not item["default"], item["runtime"]),
    )
    return str(next(item["runtime"] for item in ordered if version_matches(version, item["version"])))


@pytest.mark.integration
async def test_the_listing_shows_language_version_and_default(http: Client, headers: dict[str, str]) -> None:
    """python3.11 is listed as python at 3.11.x, not the default; python is the default."""
    listing = await _listing(http, headers)
    python311, python = listing["python3.11"], listing["python"]
    assert python311["available"], python311
    assert (python311["language"], python311["default"], python311["aliases"]) == ("python", False, [])
    assert version_matches("3.11", python311["version"])
    assert python311["version_string"] == f"Python {python311['version']}"
    assert (python["language"], python["default"]) == ("python", True)
    assert python["version_string"] == f"Python {python['version']}"
    assert listing["go"]["version_string"].startswith(f"go version go{listing['go']['version']} ")


@pytest.mark.integration
async def test_version_311_runs_python_311(http: Client, headers: dict[str, str]) -> None:
    """A version of 3.11 runs a Python 3.11, and python3.11 by its own name runs one too."""
    listing = await _listing(http, headers)
    status, result = await execute(http, headers, code=PRINT_LINE, language="python", version="3.11")
    assert status == 200, result
    assert (result["stdout"], result["status"]) == ("(3, 11)\n", "completed")
    assert result["language"] == _first_matching(listing, "python", "3.11")
    status, result = await execute(http, headers, code=PRINT_LINE, language="python3.11")
    assert status == 200, result
    assert (result["stdout"], result["language"]) == ("(3, 11)\n", "python3.11")


@pytest.mark.integration
async def test_without_a_version_the_default_python_runs(http: Client, headers: dict[str, str]) -> None:
    """No version: the runtime named python runs, at the version the listing gives it."""
    listing = await _listing(http, headers)
    for language in ("python", "py"):
        status, result = await execute(http, headers, code=PRINT_VERSION, language=language)
        assert status == 200, result
        assert (result["stdout"], result["language"]) == (f"{listing['python']['version']}\n", "python")


@pytest.mark.integration
async def test_a_full_version_runs_exactly_that_one(http: Client, headers: dict[str, str]) -> None:
    """The whole number a runtime lists selects that runtime, from any name of the language."""
    listing = await _listing(http, headers)
    version = listing["python3.11"]["version"]
    status, result = await execute(http, headers, code=PRINT_VERSION, language="py", version=version)
    assert status == 200, result
    assert result["stdout"] == f"{version}\n"
    assert result["language"] == _first_matching(listing, "python", version)


@pytest.mark.integration
async def test_an_unknown_version_is_400_naming_those_there_are(
    http: Client, headers: dict[str, str]
) -> None:
    """A version of 3.9 is refused before anything runs, with the versions the language has."""
    listing = await _listing(http, headers)
    known = [listing["python"]["version"], listing["python3.11"]["version"]]
    status, body = await execute(http, headers, code="print(1)", language="python", version="3.9")
    assert status == 400
    assert body["detail"].startswith("Unsupported version: python 3.9")
    assert body["detail"] == f"Unsupported version: python 3.9 (available: {', '.join(known)})"
    status, body = await execute(http, headers, code="print(1)", language="python", version="3.x")
    assert status == 400
    assert body["detail"].startswith("version: must be a version number")


@pytest.mark.integration
async def test_a_batch_item_may_ask_for_a_version(http: Client, headers: dict[str, str]) -> None:
    """Each item of a batch resolves its own version; one unknown version refuses the whole batch."""
    listing = await _listing(http, headers)
    status, results = await batch(
        http,
        headers,
        [
            {"code": PRINT_LINE, "language": "python", "version": "3.11"},
            {"code": PRINT_VERSION, "language": "python"},
        ],
    )
    assert status == 200, results
    assert [result["stdout"] for result in results] == ["(3, 11)\n", f"{listing['python']['version']}\n"]
    status, body = await batch(
        http,
        headers,
        [
            {"code": "print(1)", "language": "python"},
            {"code": "print(2)", "language": "py", "version": "3.9"},
        ],
    )
    assert status == 400
    assert body["detail"].startswith("Unsupported version: python 3.9")


@pytest.mark.integration
async def test_an_async_execution_keeps_its_version(http: Client, headers: dict[str, str]) -> None:
    """An asynchronous request with a version runs at that version once the queue reaches it."""
    execution_id = await submit(http, headers, code=PRINT_LINE, language="python", version="3.11")
    result = await wait_for(http, headers, execution_id, "completed")
    assert result["stdout"] == "(3, 11)\n"


@pytest.mark.integration
async def test_the_image_version_wins_over_the_declared_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The number in the image's version label decides; a runtime not inspected here has its declared one."""
    state = images_of(engine)["python3.11"]
    request = ExecutionRequest(code="1", language="python", version="3.11.99")
    monkeypatch.setitem(images_of(engine), "python3.11", attrs.evolve(state, version="Python 3.11.99"))
    assert engine.plan(request).runtime.name == "python3.11"
    monkeypatch.delitem(images_of(engine), "python3.11")
    with pytest.raises(
        UnsupportedVersionError, match=r"^Unsupported version: python 3\.11\.99 \(available: "
    ):
        engine.plan(request)
    declared = engine.plan(attrs.evolve(request, version="3.11"))
    assert declared.runtime.name in {"python", "python3.11"}
    listed = {info.runtime: info for info in engine.languages()}["python3.11"]
    assert (listed.version, listed.version_string) == ("3.11", None)
