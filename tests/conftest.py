"""Shared fixtures: real Redis and PostgreSQL on 127.0.0.1.

On a laptop without them, tests that need them skip with a message naming what to
start. Under CI=true they must run: a missing service fails the test instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("SHOAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("SHOAL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int, start_hint: str) -> None:
    if _port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}; start it with: {start_hint}"
    if IN_CI:
        pytest.fail(f"CI=true requires {name}: {message}")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    require_service(
        "Redis", "127.0.0.1", 6379,
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    )
    return REDIS_URL


@pytest.fixture
def pg_dsn() -> str:
    require_service(
        "PostgreSQL", "127.0.0.1", 5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )
    return PG_DSN


async def drop_pg_schema(dsn: str, schema: str) -> None:
    """Drop a test's PostgreSQL schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url(pg_dsn: str) -> AsyncIterator[str]:
    """A PostgreSQL store URL on a schema of its own, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{pg_dsn}?schema={schema}&pool_max=8"
    await drop_pg_schema(pg_dsn, schema)


@pytest.fixture
def unique_prefix() -> str:
    """A key/table prefix no other test (or concurrent test run) uses."""
    return f"shoaltest:{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def journal_url(
    request: pytest.FixtureRequest, tmp_path: Path, unique_prefix: str
) -> AsyncIterator[str]:
    """A journal store URL for each store kind (SQLite; Redis and PostgreSQL when up),
    cleaned up after the test."""
    kind: str = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    if kind == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        yield f"{redis_url}?prefix={unique_prefix}"
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{unique_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = f"journal_{uuid.uuid4().hex[:12]}"
    yield f"{dsn}?schema={schema}&pool_max=4"
    await drop_pg_schema(dsn, schema)
