"""The daemon's HTTP transport to Agora: many acquires in flight over several small connection pools.

httpcore's connection pool looks at every one of its connections for every request it assigns (whether each has
expired, is idle, is readable: a system call each), so the cost of one request grows with the pool, and the cost
of a burst with its square (encode/httpcore#1035, open). At 256 acquires in flight, one pool of 512 connections
took a whole core for about 100 acquires/s. Spread over pools of at most `PER_SHARD` connections, a request costs
what it costs in a pool of that size, whatever the number in flight.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx

PER_SHARD = 32  # connections per pool: small enough that a pool's scan is cheap, large enough to reuse them


class Shards(httpx.AsyncBaseTransport):
    """Requests go to the pool with the fewest requests in flight (a request is in flight until its response is
    closed); `connections` in all, `per_shard` at most in each."""

    def __init__(self, connections: int, *, per_shard: int = PER_SHARD, keepalive_expiry: float = 30.0) -> None:
        count = max(1, math.ceil(connections / per_shard))
        size = math.ceil(connections / count)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=keepalive_expiry)
        self.pools = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(count)]
        self.busy = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self.pools)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            response = await self.pools[i].handle_async_request(request)
        except BaseException:
            self.busy[i] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, self, i)
        return response

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its pool's slot back when it is closed (httpx closes every response)."""

    def __init__(self, stream: httpx.AsyncByteStream, owner: Shards, index: int) -> None:
        self.stream, self.owner, self.index, self.open = stream, owner, index, True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if self.open:
                self.open = False
                self.owner.busy[self.index] -= 1


def client(connections: int, timeout: httpx.Timeout, **kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient over `Shards` of `connections` connections in all."""
    return httpx.AsyncClient(timeout=timeout, transport=Shards(connections), **kwargs)
