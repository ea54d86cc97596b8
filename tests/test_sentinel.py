"""ridpool under Redis Sentinel, started once for the module: a primary, a replica, a sentinel, one failover."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ridpool import PoolClient, PoolEmpty
from ridpool.daemon.config import Config
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.servers import RedisProc, sentinel_group, wait_for
from tests.test_cli import ridpool

pytestmark = pytest.mark.integration
SERVICE = "mymaster"
# In sentinel mode the URL gives scheme, credentials and database only: this host:port is never dialled.
IGNORED = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def group() -> Iterator[tuple[RedisProc, RedisProc, RedisProc]]:
    with sentinel_group(SERVICE) as started:
        yield started


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    yield simulator
    simulator.stop()


def sentinel_config(watcher: RedisProc, sim: Simulator) -> Config:
    base = make_config(IGNORED, sim.url, web_pool(3), rooms_pool(1))
    redis_settings = base.redis.model_copy(
        update={"mode": "sentinel", "sentinels": (f"127.0.0.1:{watcher.port}",), "service_name": SERVICE}
    )
    return base.model_copy(update={"redis": redis_settings})


def primary_port(watcher: RedisProc) -> int:
    with watcher.client(decode_responses=True) as w:
        return int(w.sentinel_get_master_addr_by_name(SERVICE)[1])


async def test_daemon_clients_and_cli_work_through_a_failover_without_handing_out_an_id_twice(
    group: tuple[RedisProc, RedisProc, RedisProc], sim: Simulator, tmp_path: Path
) -> None:
    """Fill, pop, fail over to the replica: pops go on from the new primary, refilled there; duplicates 0."""
    primary, replica, watcher = group
    config = sentinel_config(watcher, sim)
    kwargs = {"mode": "sentinel", "sentinels": [f"127.0.0.1:{watcher.port}"], "service_name": SERVICE}
    popped: list[str] = []
    async with running(config):
        with PoolClient.from_url(IGNORED, prefix=PREFIX, **kwargs) as client:  # type: ignore[arg-type]
            await eventually(lambda: client.stats("web").size == 3, 30, "web full before the failover")
            popped += [client.pop("web").resource_id for _ in range(2)]
            popped.append(client.pop("rooms", cname="room-1").resource_id)
            before = primary_port(watcher)
            with primary.client() as old:
                assert old.wait(1, 5000) == 1  # the replica has all of it: a clean, planned failover
            with watcher.client() as w:
                w.execute_command("SENTINEL", "FAILOVER", SERVICE)
            wait_for(lambda: primary_port(watcher) != before, 30, what="the sentinel to promote the replica")
            assert primary_port(watcher) == replica.port

            def pop_one() -> bool:
                try:
                    popped.append(client.pop("web").resource_id)
                except PoolEmpty:
                    return False
                return True

            await eventually(pop_one, 30, "a pop served by the new primary")
            await eventually(lambda: client.stats("web").size == 3, 30, "web refilled on the new primary")
            popped += [client.pop("web").resource_id for _ in range(3)]
    assert len(popped) == len(set(popped)) == 7
    with replica.client() as r:
        assert r.fcall("ridpool_version", 0)  # the library is on the new primary
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[redis]\nurl = "{IGNORED}"\nkey_prefix = "{PREFIX}"\nmode = "sentinel"\n'
        f'sentinels = ["127.0.0.1:{watcher.port}"]\nservice_name = "{SERVICE}"\n'
        f'[agora]\nbase_url = "http://127.0.0.1:1"\n'
        f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nscene = 1\nuid = "1"\n'
    )
    status = ridpool("status", "-c", str(toml))
    assert status.returncode == 0 and "web" in status.stdout, status.stderr
    assert primary.process is not None  # the old primary lives on, as a replica
