"""The OpenAPI document: valid, derived from the models, and in step with the routes."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from sandboxd.api.openapi import SPEC_URL, UI_PATH
from sandboxd.models import ExecutionRequest
from tests.daemons import Daemon

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def spec_of(http: Client) -> dict[str, Any]:
    """Fetch the served OpenAPI document (no key needed)."""
    response = await http.get(SPEC_URL)
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the application serves, the documentation's own excepted."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/docs"):
            continue
        routes.add((route.method.lower(), path))
    return routes


async def test_document_is_valid_openapi_3(http: Client) -> None:
    """The document validates as OpenAPI 3 and Swagger UI is served."""
    document = await spec_of(http)
    assert document["openapi"].startswith("3.")
    validate(document)
    ui = await http.get(UI_PATH)
    assert ui.status == 200
    assert "swagger" in (await ui.text()).lower()


async def test_every_route_is_documented_and_nothing_else(http: Client) -> None:
    """A served route without documentation, or documentation without a route, fails this test."""
    document = await spec_of(http)
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == served_routes(http.app)


async def test_every_operation_documents_its_errors(http: Client) -> None:
    """API operations document 401, and those taking a body document 400, 413 and 429."""
    document = await spec_of(http)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path.startswith("/api/v1/"):
                assert "401" in codes, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "429"} <= codes, (method, path)
                assert operation["requestBody"]["required"] is True


async def test_schemas_come_from_the_models(http: Client) -> None:
    """The request schema has the model's fields, with the two required ones marked so."""
    schemas = (await spec_of(http))["components"]["schemas"]
    request = schemas["ExecutionRequest"]
    assert set(request["properties"]) == {field.name for field in attrs.fields(ExecutionRequest)}
    assert {"expected_output", "files", "args", "output_files", "callback_url"} <= set(request["properties"])
    assert sorted(request["required"]) == ["code", "language"]
    file = schemas["InputFile"]
    assert set(file["properties"]["encoding"]["enum"]) == {"utf8", "base64"}
    assert sorted(file["required"]) == ["content", "name"]
    result = schemas["ExecutionResult"]
    assert "status" in result["properties"]
    assert set(result["properties"]["status"]["enum"]) >= {"completed", "timeout", "memory_limit"}


async def test_versions_are_described(http: Client) -> None:
    """The request's version has its pattern and length; the languages listing its new fields."""
    schemas = (await spec_of(http))["components"]["schemas"]
    version = schemas["ExecutionRequest"]["properties"]["version"]
    assert version["pattern"] == r"^[0-9]+(\.[0-9]+){0,3}$"
    assert (version["maxLength"], version["nullable"]) == (32, True)
    assert "3.11" in version["description"]
    listing = schemas["LanguageInfo"]
    assert {"runtime", "language", "version", "version_string", "default"} <= set(listing["required"])
    assert all(listing["properties"][name]["description"] for name in ("runtime", "version", "default"))


@pytest.mark.integration
async def test_schemathesis_finds_no_server_error(make_daemon: Callable[[int], Daemon]) -> None:
    """Requests generated from the OpenAPI document, valid and not, never get a 5xx of the server's own."""
    daemon = make_daemon(2)
    await daemon.start()
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("st")), "run", f"{daemon.url}{SPEC_URL}",
        "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1",
        "--header", f"X-API-Key: {daemon.key}", "--request-timeout", "120", "--no-color",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 900)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    # Every operation of the document was exercised, none skipped or errored.
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    tested = re.search(r"Tested: (\d+)", text)
    assert selected is not None, text[-3000:]
    assert tested is not None, text[-3000:]
    assert selected.group(1) == selected.group(2) == tested.group(1), text[-3000:]
