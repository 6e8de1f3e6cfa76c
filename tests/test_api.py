"""The HTTP API's contract for bad input, authentication and discovery."""

from __future__ import annotations

import json

import pytest

from sandboxd.config import Config
from tests.helpers import Client, post_raw, shipped_runtimes

pytestmark = pytest.mark.integration


async def test_missing_api_key(http: Client) -> None:
    """No X-API-Key: 401 with a detail."""
    response = await http.get("/api/v1/languages")
    assert response.status == 401
    assert await response.json() == {"detail": "Missing X-API-Key header"}


async def test_wrong_api_key(http: Client) -> None:
    """An unknown key: 401."""
    response = await http.post(
        "/api/v1/execute", json={"code": "1", "language": "python"}, headers={"X-API-Key": "nope"}
    )
    assert response.status == 401
    assert await response.json() == {"detail": "Invalid API key"}


async def test_healthz_needs_no_key(http: Client) -> None:
    """Liveness answers without a key."""
    response = await http.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_languages(http: Client, headers: dict[str, str]) -> None:
    """Every shipped runtime is listed, available, with its language, real version and aliases."""
    response = await http.get("/api/v1/languages", headers=headers)
    assert response.status == 200
    listed = {item["runtime"]: item for item in await response.json()}
    assert set(listed) == {runtime.name for runtime in shipped_runtimes()}
    assert all(item["available"] for item in listed.values())
    assert listed["python"]["version_string"].startswith("Python 3.")
    assert listed["javascript"]["version_string"].startswith("v")
    assert listed["go"]["version_string"].startswith("go version go1.")
    assert listed["ruby"]["version_string"].startswith("ruby 3.")
    for item in listed.values():
        assert item["version"] is not None, item
        assert item["version"] in item["version_string"], item
    assert listed["python"]["version"].startswith("3.")
    assert "py" in listed["python"]["aliases"]
    assert {item["runtime"] for item in listed.values() if item["default"]} == {
        runtime.name for runtime in shipped_runtimes() if runtime.language == runtime.name
    }
    assert (listed["python3.11"]["language"], listed["python"]["language"]) == ("python", "python")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"code": "print(1)", "language": "invalid"}', "Unsupported language: invalid"),
        ('{"code": "print(1)"', "Invalid JSON body: "),
        ('["not", "an", "object"]', "expected an object"),
        ('{"language": "python"}', "code: required field missing"),
        ('{"code": 5, "language": "python"}', "code: expected a string"),
        ('{"code": "1", "language": "python", "timeout": "5"}', "timeout: expected an integer"),
        (
            '{"code": "1", "language": "python", "timeout": 0}',
            "timeout: must be a positive number of seconds",
        ),
        (
            '{"code": "1", "language": "python", "timeout": 61}',
            "timeout: must be at most 60 seconds for python",
        ),
        ('{"code": "1", "language": "python", "environment": {"A": 1}}', "environment.A: expected a string"),
        (
            '{"code": "1", "language": "python", "environment": {"1A": "x"}}',
            "environment: invalid variable names: 1A",
        ),
        (
            '{"code": "1", "language": "python", "session_id": "a b"}',
            "session_id: must be 1 to 128 characters",
        ),
        ('{"code": "1", "language": "python", "memory": 5}', "unknown field: memory"),
        ('{"code": "", "language": "python"}', "code: must not be empty"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    http: Client, headers: dict[str, str], body: str, detail: str
) -> None:
    """Malformed, missing, mistyped or out-of-range input gives 400 and says which field."""
    status, result = await post_raw(http, body, headers)
    assert status == 400
    assert result["detail"].startswith(detail), result


async def test_oversized_code_is_rejected(http: Client, headers: dict[str, str]) -> None:
    """Code above 64 KiB is a 400 naming the field."""
    status, result = await post_raw(
        http, json.dumps({"code": "#" * (65 << 10), "language": "python"}), headers
    )
    assert status == 400
    assert result["detail"] == "code: must be at most 65536 bytes"


async def test_oversized_body_is_413(http: Client, headers: dict[str, str], config: Config) -> None:
    """A body beyond the server's limit is refused with 413 and a JSON detail."""
    code = "#" * (config.server.max_body_bytes + 1)
    status, result = await post_raw(http, json.dumps({"code": code, "language": "python"}), headers)
    assert status == 413
    assert result["detail"].startswith("Request body too large")


async def test_unknown_route_is_json_404(http: Client, headers: dict[str, str]) -> None:
    """Unknown paths answer with the same JSON error shape."""
    response = await http.get("/api/v1/nothing", headers=headers)
    assert response.status == 404
    assert await response.json() == {"detail": "Not Found"}


async def test_stdin_bound(http: Client, headers: dict[str, str]) -> None:
    """Exactly 1 MiB of stdin is delivered whole; one byte more is a 400 naming stdin."""
    code = "import sys\nprint(len(sys.stdin.read()))"
    limit = 1 << 20
    status, result = await post_raw(
        http, json.dumps({"code": code, "language": "python", "stdin": "x" * limit}), headers
    )
    assert status == 200
    assert result["stdout"] == f"{limit}\n"
    body = json.dumps({"code": code, "language": "python", "stdin": "x" * (limit + 1)})
    status, result = await post_raw(http, body, headers)
    assert (status, result) == (400, {"detail": f"stdin: must be at most {limit} bytes"})
