"""ridpool on a real 3-primary Redis Cluster, started once for the module: daemon, clients, CLI, library."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ridpool import AsyncPoolClient, PoolClient, functions
from ridpool.daemon.config import Config
from ridpool.errors import EvictionRisk
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import RedisProc, cluster
from tests.test_cli import ridpool

pytestmark = pytest.mark.integration
# Three pools whose hash tags fall on three different primaries (checked below).
POOLS = ("web", "rooms", "stage")


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RedisProc]]:
    with cluster(3) as started:
        yield started


@pytest.fixture
def url(nodes: list[RedisProc]) -> str:
    for node in nodes:
        with node.client() as r:
            r.flushall()
            r.function_flush()
    return nodes[1].url  # any node will do


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    yield simulator
    simulator.stop()


def cluster_config(url: str, sim: Simulator) -> Config:
    stage = {"name": "stage", "appid": APPID, "cname": "stage", "uid": "42", "size": 2, "max_age": 270}
    base = make_config(url, sim.url, web_pool(3), rooms_pool(1), stage)
    return base.model_copy(update={"redis": base.redis.model_copy(update={"mode": "cluster"})})


def owner_of(nodes: list[RedisProc], key: str) -> int:
    """Which of `nodes` serves `key`."""
    with redis.RedisCluster.from_url(nodes[0].url) as rc:
        owner = rc.get_node_from_key(key)
    return next(i for i, n in enumerate(nodes) if n.port == owner.port)


async def test_the_daemon_fills_pools_on_every_primary_and_clients_pop_them(
    nodes: list[RedisProc], url: str, sim: Simulator
) -> None:
    """Pools on three primaries fill; sync and async clients pop each; every primary holds the library."""
    assert {owner_of(nodes, pool_keys(PREFIX, p).meta) for p in POOLS} == {0, 1, 2}
    async with running(cluster_config(url, sim)):
        with PoolClient.from_url(url, prefix=PREFIX, mode="cluster") as client:
            await eventually(
                lambda: [client.stats(p).size for p in POOLS] == [3, 3, 2], 30, "every pool full on the cluster"
            )
            popped = [client.pop("web").resource_id, client.pop("rooms", cname="room-2").resource_id]
            popped.append(client.pop("stage", cname="stage").resource_id)
        async with AsyncPoolClient.from_url(url, prefix=PREFIX, mode="cluster") as aclient:
            popped.append((await aclient.pop("web")).resource_id)
    assert len(set(popped)) == 4
    for node in nodes:
        with node.client() as r:
            assert r.fcall("ridpool_version", 0) == str(functions.LIBRARY_VERSION).encode()


def test_a_primary_that_lost_the_library_gets_it_back(nodes: list[RedisProc], url: str) -> None:
    """FUNCTION FLUSH on the node serving a pool (a new primary after a resharding): the next pop reloads it."""
    with redis.RedisCluster.from_url(url) as rc, PoolClient.from_url(url, prefix=PREFIX, mode="cluster") as client:
        publish_pool(rc, PREFIX, "web")  # type: ignore[arg-type]
        assert client.stats("web").known
        nodes[owner_of(nodes, pool_keys(PREFIX, "web").meta)].client().function_flush()
        with pytest.raises(Exception, match="no entry"):
            client.pop("web")


def test_the_cli_pops_and_shows_status_on_a_cluster_and_a_plain_client_is_told_moved(
    nodes: list[RedisProc], url: str, tmp_path: Path
) -> None:
    """`ridpool status -c` (mode cluster) works; a standalone client on the wrong node exits 9 naming Cluster."""
    with redis.RedisCluster.from_url(url) as rc:
        for p in POOLS:
            publish_pool(rc, PREFIX, p)  # type: ignore[arg-type]
        fill(rc, PREFIX, "web", 2)  # type: ignore[arg-type]
    config = tmp_path / "c.toml"
    config.write_text(
        f'[redis]\nurl = "{url}"\nkey_prefix = "{PREFIX}"\nmode = "cluster"\n[agora]\nbase_url = "http://127.0.0.1:1"\n'
        f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nscene = 1\nuid = "1"\n'
    )
    done = ridpool("pop", "web", "-c", str(config))
    assert done.returncode == 0, done.stderr
    status = ridpool("status", "-c", str(config))
    assert status.returncode == 0 and "web" in status.stdout, status.stderr
    wrong = next(n for i, n in enumerate(nodes) if i != owner_of(nodes, pool_keys(PREFIX, "web").meta))
    done = ridpool("pop", "web", "--redis-url", wrong.url, "--prefix", PREFIX)
    assert done.returncode == 9 and "cluster" in done.stderr.lower(), done.stderr


def test_a_pool_resharded_to_another_primary_hands_out_no_entry_twice(nodes: list[RedisProc], url: str) -> None:
    """The slot of pool web moved (MIGRATE) to another primary after 2 pops: the moved queue is dropped on first
    use (it was filled on another node), fresh entries are served there, duplicates 0."""
    keys = pool_keys(PREFIX, "web")
    with redis.RedisCluster.from_url(url) as rc, PoolClient.from_url(url, prefix=PREFIX, mode="cluster") as client:
        publish_pool(rc, PREFIX, "web")  # type: ignore[arg-type]
        fill(rc, PREFIX, "web", 5)  # type: ignore[arg-type]
        popped = {client.pop("web").resource_id for _ in range(2)}
        source = nodes[owner_of(nodes, keys.meta)]
        target = nodes[(owner_of(nodes, keys.meta) + 1) % len(nodes)]
        move_slot(rc.keyslot(keys.meta), source, target, nodes)
        assert owner_of(nodes, keys.meta) == nodes.index(target)
        with pytest.raises(Exception, match="no entry"):
            client.pop("web")  # the 3 moved entries: dropped, not served
        fresh = {e.resource_id for e in fill(rc, PREFIX, "web", 2)}  # type: ignore[arg-type]
        served = {client.pop("web").resource_id for _ in range(2)}
    assert served == fresh and popped.isdisjoint(served)
    assert int(target.client().hget(keys.stats, "dropped") or 0) == 3


def test_a_pop_on_the_cluster_is_one_round_trip(nodes: list[RedisProc], url: str) -> None:
    """The client routes FCALL by its first key itself: no COMMAND GETKEYS round trip before each pop."""
    with redis.RedisCluster.from_url(url) as rc, PoolClient.from_url(url, prefix=PREFIX, mode="cluster") as client:
        publish_pool(rc, PREFIX, "web")  # type: ignore[arg-type]
        fill(rc, PREFIX, "web", 20)  # type: ignore[arg-type]
        client.pop("web")
        for node in nodes:
            node.client().config_resetstat()
        for _ in range(10):
            client.pop("web")
    stats = [node.client().info("commandstats") for node in nodes]
    assert sum(s.get("cmdstat_fcall", {}).get("calls", 0) for s in stats) == 10
    assert sum(s.get("cmdstat_command|getkeys", {}).get("calls", 0) for s in stats) == 0


def move_slot(slot: int, source: RedisProc, target: RedisProc, nodes: list[RedisProc]) -> None:
    """Move one hash slot and its keys from `source` to `target`, as `redis-cli --cluster reshard` does."""
    src, dst = source.client(), target.client()
    src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moving = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if moving:
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)
    for node in nodes:
        with node.client() as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    src.close()
    dst.close()


async def test_eviction_allowed_on_any_one_primary_is_refused(nodes: list[RedisProc], url: str, sim: Simulator) -> None:
    """maxmemory-policy allkeys-lru on one primary only (each one in turn): the daemon refuses to run."""
    for node in nodes:
        with node.client() as r:
            r.config_set("maxmemory-policy", "allkeys-lru")
            r.config_set("maxmemory", "1gb")
            try:
                with pytest.raises(EvictionRisk, match="maxmemory-policy"):
                    async with running(cluster_config(url, sim)):
                        pass
            finally:
                r.config_set("maxmemory-policy", "noeviction")
                r.config_set("maxmemory", 0)


async def test_announced_channels_are_served_on_a_cluster_through_the_cli_and_the_client(
    url: str, sim: Simulator, tmp_path: Path
) -> None:
    """Mode cluster: `ridpool announce -c FILE` and `PoolClient.announce` both reach the pool's primary; the daemon
    acquires for each channel and pops (CLI and client) get IDs that start at the simulator for that channel."""
    pool = {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "max_age": 270}
    base = make_config(url, sim.url, pool)
    config = base.model_copy(update={"redis": base.redis.model_copy(update={"mode": "cluster"})})
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[redis]\nurl = "{url}"\nkey_prefix = "{PREFIX}"\nmode = "cluster"\n[agora]\nbase_url = "{sim.url}"\n'
        f'[[pools]]\nname = "classes"\nappid = "{APPID}"\nannounced = true\nuid = "527841"\n'
    )
    async with running(config):
        with PoolClient.from_url(url, prefix=PREFIX, mode="cluster") as client:
            await eventually(lambda: client.stats("classes").known, 15, "the announced pool published")
            done = ridpool("announce", "classes", "--cname", "class-1", "--at", "+1", "-c", str(toml))
            assert done.returncode == 0, done.stderr
            client.announce("classes", "class-2", at=1)

            def ready(cname: str) -> bool:
                with redis.RedisCluster.from_url(url) as rc:
                    return bool(rc.zcard(pool_keys(PREFIX, "classes").queue(cname)) == 1)

            await eventually(lambda: ready("class-1") and ready("class-2"), 20, "both announced channels acquired")
            cli_pop = ridpool("pop", "classes", "--cname", "class-1", "-c", str(toml))
            entry = client.pop("classes", cname="class-2")
    assert cli_pop.returncode == 0, cli_pop.stderr
    popped = json.loads(cli_pop.stdout)
    assert sim.check(popped["resourceId"], appid=APPID, cname="class-1", uid="527841") is None
    assert sim.check(entry.resource_id, appid=APPID, cname="class-2", uid="527841") is None
