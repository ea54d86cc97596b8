"""Test rig: one real redis-server per session on a free port, flushed before each test that uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, PoolClient

from tests.servers import RedisServer

PREFIX = "t"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean Redis: no keys, no function library (each test proves the library gets loaded when missing)."""
    if redis_server.process is None:
        redis_server.start()  # a previous test killed it
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
        r.function_flush()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[PoolClient]:
    with PoolClient.from_url(redis_url, prefix=PREFIX) as c:
        yield c


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[AsyncPoolClient]:
    async with AsyncPoolClient.from_url(redis_url, prefix=PREFIX) as c:
        yield c
