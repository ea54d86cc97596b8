"""Clients on a real Redis Cluster with replicas, through a primary's death and its replica's promotion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from ridpool import AsyncPoolClient, PoolClient, PoolEmpty, PoolUnavailable
from ridpool.keys import pool_keys

from tests.conftest import PREFIX
from tests.poolkit import fill, publish_pool
from tests.servers import RedisProc, cluster, wait_for

pytestmark = pytest.mark.integration
POOLS = ("web", "rooms", "stage")  # their hash tags fall on three different primaries


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RedisProc]]:
    with cluster(3, replicas=1) as started:
        yield started


def admin(nodes: list[RedisProc]) -> redis.RedisCluster:
    alive = next(n for n in nodes if n.process is not None)
    return redis.RedisCluster.from_url(alive.url)


def primary_of(nodes: list[RedisProc], key: str) -> RedisProc:
    with admin(nodes) as rc:
        node = rc.get_node_from_key(key)
    return next(n for n in nodes if n.port == node.port)


def healthy(nodes: list[RedisProc]) -> bool:
    """Every running node says the cluster is ok and every replica is in sync with its primary."""
    for n in nodes:
        if n.process is None:
            continue
        with n.client(decode_responses=True) as r:
            if r.cluster("info")["cluster_state"] != "ok":
                return False
            info = r.info("replication")
            if info["role"] == "slave" and info["master_link_status"] != "up":
                return False
    return True


@pytest.fixture
def fresh(nodes: list[RedisProc]) -> Iterator[list[RedisProc]]:
    """Every node running and in sync, the data flushed; afterwards a killed node restarts (it rejoins as a
    replica of the primary that replaced it)."""
    wait_for(lambda: healthy(nodes), 60, what="a healthy cluster")
    for n in nodes:
        with n.client() as r:
            if r.info("replication")["role"] == "master":
                r.flushall()
                r.function_flush()
    yield nodes
    for n in nodes:
        if n.process is None:
            n.start()
    wait_for(lambda: healthy(nodes), 60, what="the killed node back as a replica")


def prepare(nodes: list[RedisProc], n: int) -> None:
    with admin(nodes) as rc:
        for pool in POOLS:
            publish_pool(rc, PREFIX, pool)  # type: ignore[arg-type]
            fill(rc, PREFIX, pool, n)  # type: ignore[arg-type]


def refill(nodes: list[RedisProc], pool: str, n: int) -> None:
    """What a daemon does after a failover: publish again (the promoted replica's queue was dropped) and add."""
    with admin(nodes) as rc:
        publish_pool(rc, PREFIX, pool)  # type: ignore[arg-type]
        fill(rc, PREFIX, pool, n)  # type: ignore[arg-type]


async def through_failover(
    nodes: list[RedisProc], pop: Callable[[str], Awaitable[Any]], seconds: float = 60.0
) -> tuple[list[str], dict[str, float]]:
    """Kill the primary of pool web; keep popping every pool (all template pools). Returns every ID popped and,
    per pool, the seconds after the kill of its first pop."""
    popped = [(await pop(p)).resource_id for p in POOLS]
    primary_of(nodes, pool_keys(PREFIX, "web").meta).kill()
    killed = time.monotonic()
    back: dict[str, float] = {}
    refilled = False
    while time.monotonic() - killed < seconds and len(back) < len(POOLS):
        for pool in POOLS:
            try:
                popped.append((await pop(pool)).resource_id)
            except PoolUnavailable:
                continue
            except PoolEmpty:
                if pool == "web" and not refilled:
                    refill(nodes, "web", 3)  # the promoted replica dropped what it held: filled again
                    refilled = True
                continue
            back.setdefault(pool, time.monotonic() - killed)
        await asyncio.sleep(0.05)
    assert set(back) == set(POOLS), f"pools that never popped again: {set(POOLS) - set(back)}"
    return popped, back


async def test_a_sync_cluster_client_follows_a_dead_primary_and_its_failover(fresh: list[RedisProc]) -> None:
    """PoolClient in cluster mode, made from the URL of web's primary: that primary killed, the other pools pop on
    within a second (not after the failover), web once its replica is promoted (what it held is dropped, what is
    added after pops), and no ID is popped twice."""
    prepare(fresh, 20)
    first = primary_of(fresh, pool_keys(PREFIX, "web").meta)  # the node the client knows first is the one to die
    with PoolClient.from_url(first.url, prefix=PREFIX, mode="cluster", socket_timeout=1.0) as client:

        async def pop(pool: str) -> Any:
            return client.pop(pool)

        popped, back = await through_failover(fresh, pop)
    assert len(popped) == len(set(popped)) > 6
    assert back["rooms"] < 1.5 and back["stage"] < 1.5 and back["web"] < 30, back


async def test_an_async_cluster_client_follows_a_dead_primary_and_its_failover(fresh: list[RedisProc]) -> None:
    """AsyncPoolClient in cluster mode, the same: the other pools on within a second, web after the failover,
    no ID twice."""
    prepare(fresh, 20)
    first = primary_of(fresh, pool_keys(PREFIX, "web").meta)
    async with AsyncPoolClient.from_url(first.url, prefix=PREFIX, mode="cluster", socket_timeout=1.0) as client:
        popped, back = await through_failover(fresh, client.pop)
    assert len(popped) == len(set(popped)) > 6
    assert back["rooms"] < 1.5 and back["stage"] < 1.5 and back["web"] < 30, back
