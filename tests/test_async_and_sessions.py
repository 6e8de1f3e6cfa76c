"""Asynchronous executions, cancellation, sessions, ownership and rate limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from sandboxd.api.auth import generate_key, hash_key
from sandboxd.config import ApiKey
from tests.helpers import Client, batch, execute, submit, wait_for

pytestmark = pytest.mark.integration


async def test_async_result_has_the_sync_fields(http: Client, headers: dict[str, str]) -> None:
    """A finished async execution reads back exactly like a synchronous result."""
    execution_id = await submit(http, headers, code="print('async')", language="py", session_id="s-async")
    result = await wait_for(http, headers, execution_id, "completed")
    assert result == {
        "execution_id": execution_id,
        "stdout": "async\n",
        "stderr": "",
        "exit_code": 0,
        "execution_time": result["execution_time"],
        "language": "python",
        "session_id": "s-async",
        "status": "completed",
        "cpu_time": result["cpu_time"],
        "memory_peak": result["memory_peak"],
        "passed": None,
        "output_files": None,
    }
    assert result["execution_time"] > 0
    assert result["cpu_time"] > 0
    assert result["memory_peak"] > 1 << 20


async def test_cancel_running(http: Client, headers: dict[str, str]) -> None:
    """DELETE on a running execution ends it as cancelled, with exit_code -1."""
    execution_id = await submit(http, headers, code="import time; time.sleep(30)", language="python")
    running = await wait_for(http, headers, execution_id, "running")
    assert running == {
        "execution_id": execution_id,
        "status": "running",
        "language": "python",
        "session_id": None,
    }
    await asyncio.sleep(1)
    response = await http.delete(f"/api/v1/executions/{execution_id}", headers=headers)
    assert response.status == 200
    cancelled = await response.json()
    assert (cancelled["status"], cancelled["exit_code"]) == ("cancelled", -1)
    again = await http.get(f"/api/v1/executions/{execution_id}", headers=headers)
    assert (await again.json())["status"] == "cancelled"
    twice = await http.delete(f"/api/v1/executions/{execution_id}", headers=headers)
    assert twice.status == 409
    assert (await twice.json())["detail"] == f"Execution {execution_id} has already finished (cancelled)"


async def test_unknown_execution_is_404(http: Client, headers: dict[str, str]) -> None:
    """An id nobody created gives 404 for GET and DELETE."""
    for method in (http.get, http.delete):
        response = await method("/api/v1/executions/00000000-0000-0000-0000-000000000000", headers=headers)
        assert response.status == 404
        assert (await response.json())["detail"].startswith("Execution not found")


async def test_session_listing_newest_first_and_paginated(http: Client, headers: dict[str, str]) -> None:
    """Sync, batch and async executions are all listed under their session, newest first, in pages."""
    session = "s-listing"
    _, sync = await execute(http, headers, code="print(1)", language="python", session_id=session)
    first = sync["execution_id"]
    items = [{"code": f"print({i})", "language": "python", "session_id": session} for i in (2, 3)]
    _, results = await batch(http, headers, items)
    second, third = [r["execution_id"] for r in results]
    fourth = await submit(http, headers, code="print(4)", language="python", session_id=session)
    await wait_for(http, headers, fourth, "completed")

    page = await (await http.get(f"/api/v1/sessions/{session}/executions?limit=3", headers=headers)).json()
    assert [e["execution_id"] for e in page["executions"]] == [fourth, third, second]
    assert page["next_offset"] == 3
    assert page["executions"][0]["status"] == "completed"
    assert page["executions"][0]["exit_code"] == 0
    rest = await (
        await http.get(f"/api/v1/sessions/{session}/executions?limit=3&offset=3", headers=headers)
    ).json()
    assert [e["execution_id"] for e in rest["executions"]] == [first]
    assert rest["next_offset"] is None
    bad = await http.get(f"/api/v1/sessions/{session}/executions?limit=0", headers=headers)
    assert bad.status == 400
    assert (await bad.json())["detail"] == "limit: must be a whole number from 1 to 200"


@pytest.fixture
async def two_key_server(
    make_server: Callable[..., Awaitable[Client]],
) -> tuple[Client, dict[str, str], dict[str, str]]:
    """A server with two keys: one at 5 executions a minute, one at the default rate."""
    alice, bob = generate_key(), generate_key()
    keys = (
        ApiKey(name="alice", sha256=hash_key(alice), rate_limit=5),
        ApiKey(name="bob", sha256=hash_key(bob)),
    )
    client = await make_server(api_keys=keys, dev_keys=())
    headers = {"Content-Type": "application/json"}
    return client, {**headers, "X-API-Key": alice}, {**headers, "X-API-Key": bob}


async def test_ownership(two_key_server: tuple[Client, dict[str, str], dict[str, str]]) -> None:
    """Another key cannot read, list or cancel your executions."""
    http, alice, bob = two_key_server
    execution_id = await submit(
        http, alice, code="import time; time.sleep(20)", language="python", session_id="mine"
    )
    await wait_for(http, alice, execution_id, "running")
    assert (await http.get(f"/api/v1/executions/{execution_id}", headers=bob)).status == 404
    assert (await http.delete(f"/api/v1/executions/{execution_id}", headers=bob)).status == 404
    listing = await (await http.get("/api/v1/sessions/mine/executions", headers=bob)).json()
    assert listing["executions"] == []
    own = await (await http.get("/api/v1/sessions/mine/executions", headers=alice)).json()
    assert [e["execution_id"] for e in own["executions"]] == [execution_id]
    cancelled = await http.delete(f"/api/v1/executions/{execution_id}", headers=alice)
    assert (await cancelled.json())["status"] == "cancelled"


async def test_rate_limit(two_key_server: tuple[Client, dict[str, str], dict[str, str]]) -> None:
    """Five a minute: a batch that would cross the limit is refused whole with 429; headers count down."""
    http, alice, bob = two_key_server
    one = json.dumps({"code": "print(1)", "language": "python"})
    response = await http.post("/api/v1/execute", data=one, headers=alice)
    assert response.status == 200
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("5", "4")
    three = json.dumps(
        [{"code": f"print({i})", "language": "python", "session_id": "limited"} for i in range(3)]
    )
    response = await http.post("/api/v1/execute/batch", data=three, headers=alice)
    assert response.status == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"
    response = await http.post("/api/v1/execute/batch", data=three, headers=alice)
    assert response.status == 429
    assert await response.json() == {"detail": "Rate limit exceeded"}
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-RateLimit-Remaining"] == "1"
    listing = await (await http.get("/api/v1/sessions/limited/executions", headers=alice)).json()
    assert len(listing["executions"]) == 3  # the refused batch ran nothing
    response = await http.post("/api/v1/execute", data=one, headers=bob)
    assert response.status == 200
    assert response.headers["X-RateLimit-Limit"] == "600"


async def test_cancel_queued(make_server: Callable[..., Awaitable[Client]], headers: dict[str, str]) -> None:
    """With the only slot busy, a queued execution is cancelled before it runs; the running one goes on."""
    http = await make_server(limits={"concurrency": 1})
    running = await submit(http, headers, code="import time; time.sleep(2); print('ran')", language="python")
    await wait_for(http, headers, running, "running")
    queued = await submit(http, headers, code="print('must not run')", language="python")
    waiting = await wait_for(http, headers, queued, "queued")
    assert waiting == {"execution_id": queued, "status": "queued", "language": "python", "session_id": None}
    response = await http.delete(f"/api/v1/executions/{queued}", headers=headers)
    cancelled = await response.json()
    assert (cancelled["status"], cancelled["stdout"], cancelled["exit_code"]) == ("cancelled", "", -1)
    finished = await wait_for(http, headers, running, "completed")
    assert finished["stdout"] == "ran\n"
