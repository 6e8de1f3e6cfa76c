"""PostgreSQL schemas of the tests' own, in the private cluster `scripts/dev test` starts."""

from __future__ import annotations

import os
import uuid
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


STORE_VARIABLE = "SANDBOXD_TEST_STORE"


def suite_on_postgres() -> bool:
    """Whether the suite's daemons keep their store in PostgreSQL (SANDBOXD_TEST_STORE=postgresql)."""
    wanted = os.environ.get(STORE_VARIABLE, "sqlite")
    if wanted not in ("sqlite", "postgresql"):
        pytest.fail(f"{STORE_VARIABLE} must be sqlite or postgresql, not {wanted!r}")
    return wanted == "postgresql"


class Schemas:
    """Fresh schemas of the tests' PostgreSQL, one per daemon that must not share a queue."""

    def __init__(self) -> None:
        self._made: list[str] = []

    def url(self) -> str:
        """A URL whose connections see only a new, empty schema."""
        server = postgres_server()
        schema = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        self._made.append(schema)
        separator = "&" if "?" in server else "?"
        return f"{server}{separator}options={quote(f'-csearch_path={schema}')}"

    def close(self) -> None:
        """Drop every schema made."""
        if self._made:
            with psycopg.connect(postgres_server(), autocommit=True) as connection:
                for schema in self._made:
                    connection.execute(f"DROP SCHEMA {schema} CASCADE")
