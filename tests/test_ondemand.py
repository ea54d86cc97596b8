"""pop_or_acquire: from the pool when it can, else acquired on the spot within the shared budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio
from ridpool import (
    AcquireFailed,
    AsyncPoolClient,
    CnameNotServed,
    InvalidArgument,
    MissingExtra,
    PoolClient,
    PoolUnavailable,
    plugins,
)
from ridpool.daemon.config import Config
from ridpool.daemon.ondemand import OnDemand
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CREDENTIALS, CUSTOMER_ID, SECRET, make_config, rooms_pool, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import free_port
from tests.test_cli import ridpool

pytestmark = pytest.mark.integration
ENV = {"AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
CLASSES = {"name": "classes", "appid": APPID, "announced": True, "uid_range": [900000, 900009]}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=9) as s:
        yield s


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def config_for(redis_url: str, sim_url: str) -> Config:
    return make_config(redis_url, sim_url, web_pool(), rooms_pool(), CLASSES, rate_limit=10)


def publish_all(r: redis.Redis) -> None:
    publish_pool(r, PREFIX, "web")
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2", "room-3"))


async def test_an_entry_in_the_pool_comes_from_the_pool(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None
) -> None:
    """With an entry ready, pop_or_acquire pops it (source "pool") and Agora is not called."""
    publish_all(r)
    [stored] = fill(r, PREFIX, "web", 1)
    async with AsyncPoolClient.from_config(config_for(redis_url, sim.url)) as client:
        entry = await client.pop_or_acquire("web")
    assert entry.resource_id == stored.resource_id and entry.source == "pool"
    assert sim.stats().requests == 0


@pytest.mark.parametrize(("pool", "cname"), [("web", None), ("rooms", "room-2"), ("classes", "class 8472")])
async def test_an_empty_pool_acquires_on_the_spot_for_template_named_and_announced_pools(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None, pool: str, cname: str | None
) -> None:
    """An empty pool (or a never announced channel) gets an ID acquired now for its own channel: source "acquired"."""
    publish_all(r)
    async with AsyncPoolClient.from_config(config_for(redis_url, sim.url)) as client:
        if pool == "classes":
            publish_pool(r, PREFIX, "classes")  # any published mode; the channel is acquired for by name
        entry = await client.pop_or_acquire(pool, cname=cname)
    assert entry.source == "acquired" and entry.pool == pool
    assert entry.expires_in is not None and 260 < entry.expires_in <= 270
    assert sim.check(entry.resource_id, appid=entry.appid, cname=entry.cname, uid=entry.uid) is None
    assert r.hget(pool_keys(PREFIX, pool).stats, "acquired_on_demand") == b"1"
    if pool == "classes":
        assert r.zscore(pool_keys(PREFIX, "classes").uids, entry.uid) is not None  # held while the ID can live


def test_the_sync_client_acquires_through_the_same_core(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None
) -> None:
    """PoolClient.pop_or_acquire drives the same on-demand core on a background loop."""
    publish_all(r)
    with PoolClient.from_config(config_for(redis_url, sim.url)) as client:
        entries = [client.pop_or_acquire("rooms", cname="room-1") for _ in range(2)]
    assert [e.source for e in entries] == ["acquired", "acquired"]
    assert len({e.resource_id for e in entries}) == 2


async def test_a_channel_the_pool_does_not_serve_is_not_acquired_for(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None
) -> None:
    """A named pool's unlisted channel stays CnameNotServed; nothing is acquired."""
    publish_all(r)
    async with AsyncPoolClient.from_config(config_for(redis_url, sim.url)) as client:
        with pytest.raises(CnameNotServed):
            await client.pop_or_acquire("rooms", cname="room-9")
    assert sim.stats().requests == 0


async def test_agora_rejecting_the_channel_raises_acquire_failed(
    r: redis.Redis, redis_url: str, credentials: None
) -> None:
    """Agora's 400 invalid_channel_name (not retried) comes back as AcquireFailed with its X-Request-Id."""
    publish_all(r)

    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": 401, "reason": "invalid_channel_name"}, headers={"x-request-id": "q7"})

    config = config_for(redis_url, "http://agora.test")
    acquirer = OnDemand(
        config,
        CREDENTIALS,
        redis.asyncio.Redis.from_url(redis_url),
        http=httpx.AsyncClient(transport=httpx.MockTransport(reject)),
    )
    with pytest.raises(AcquireFailed, match="invalid_channel_name") as info:
        await acquirer.acquire("rooms", cname="room-1")
    assert info.value.request_id == "q7"  # type: ignore[attr-defined]
    await acquirer.aclose()
    await acquirer.redis.aclose()


async def test_redis_down_is_pool_unavailable(sim: Simulator, credentials: None) -> None:
    """With Redis unreachable, pop_or_acquire fails as PoolUnavailable (it neither pops nor spends the budget)."""
    async with AsyncPoolClient.from_config(config_for(f"redis://127.0.0.1:{free_port()}/0", sim.url)) as client:
        with pytest.raises(PoolUnavailable):
            await client.pop_or_acquire("web")
    assert sim.stats().requests == 0


async def test_without_a_config_pop_or_acquire_says_how_to_make_one(redis_url: str) -> None:
    """A client made from a URL cannot acquire: the error says to use from_config."""
    async with AsyncPoolClient.from_url(redis_url, prefix=PREFIX) as client:
        with pytest.raises(InvalidArgument, match="from_config"):
            await client.pop_or_acquire("web")


def test_without_the_acquirer_registered_pop_or_acquire_names_the_extra(
    r: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the starter-only install (no acquirer registered), from_config still pops; pop_or_acquire says which
    extra to install, in one line."""
    monkeypatch.setattr(plugins, "_entry_points", lambda group: {})
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    with PoolClient.from_config(write_config(tmp_path, redis_url, "http://agora.test")) as client:
        assert client.pop("web").source == "pool"
        with pytest.raises(MissingExtra, match=r"pip install 'ridpool\[daemon\]'"):
            client.pop_or_acquire("web")


# -- the CLI --------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, redis_url: str, agora: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "{agora}"\nrate_limit = 10\n'
        f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nscene = 1\nuid = "527841"\n'
    )
    return path


def test_ridpool_pop_or_acquire_prints_the_source(
    r: redis.Redis, redis_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """`ridpool pop --or-acquire -c FILE` prints "source": "pool" from the pool, "acquired" once it is empty."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    config = write_config(tmp_path, redis_url, sim.url)
    sources = []
    for _ in range(2):
        done = ridpool("pop", "web", "--or-acquire", "-c", str(config), env=ENV)
        assert done.returncode == 0, done.stderr
        sources.append(json.loads(done.stdout)["source"])
    assert sources == ["pool", "acquired"]


def test_ridpool_pop_or_acquire_exits_6_when_agora_refuses(
    r: redis.Redis, redis_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """Wrong credentials (Agora's 401, not retried): exit 12 naming Agora's answer, no traceback, no secret."""
    publish_pool(r, PREFIX, "web")
    config = write_config(tmp_path, redis_url, sim.url)
    wrong = {"AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": "not-the-secret-at-all"}
    done = ridpool("pop", "web", "--or-acquire", "-c", str(config), env=wrong)
    assert done.returncode == 12 and "401" in done.stderr and "Traceback" not in done.stderr
    assert "not-the-secret-at-all" not in done.stderr


def test_ridpool_pop_or_acquire_needs_a_config(redis_url: str) -> None:
    """--or-acquire with --redis-url only: exit 2, saying -c is needed."""
    done = ridpool("pop", "web", "--or-acquire", "--redis-url", redis_url)
    assert done.returncode == 2 and "-c FILE" in done.stderr
