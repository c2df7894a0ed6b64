"""Databases for control-plane tests: a SQLite file, and a fresh database on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN_DSN = os.environ.get("MODELWORKS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def require_services() -> bool:
    return os.environ.get("MODELWORKS_REQUIRE_SERVICES") == "1"


def fresh_postgres() -> tuple[str, callable]:
    """Create an empty database; return its SQLAlchemy URL and a function that drops it."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=30)
    except Exception as exc:  # noqa: BLE001 - any failure to reach PostgreSQL means the same here
        message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    name = "mw_test_" + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]

    def drop() -> None:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}", drop


REDIS_URL = os.environ.get("MODELWORKS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_redis() -> str:
    """The real Redis's URL, or skip (a failure in CI) when it cannot be reached."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=30) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert sock.recv(64).startswith(b"+PONG"), "no PONG"
    except Exception as exc:  # noqa: BLE001
        message = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL
