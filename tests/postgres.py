"""A PostgreSQL schema of each test's own, in the private cluster `scripts/dev test` starts."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import psycopg
import pytest

POSTGRES_VARIABLE = "SANDBOXD_TEST_POSTGRES_URL"


def postgres_server() -> str:
    """The URL of the tests' PostgreSQL; the test is skipped (saying why) when there is none."""
    url = os.environ.get(POSTGRES_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_VARIABLE} is not set: `scripts/dev test` starts a private PostgreSQL")
    return url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose connections see only a fresh schema of this test's own (dropped after)."""
    server = postgres_server()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as connection:
        await connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}options={quote(f'-csearch_path={schema}')}"
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as connection:
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
