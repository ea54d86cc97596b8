"""SIGHUP re-reads the config: pools added, removed and resized within a tick, stored entries and acquires in
flight kept; an invalid config (or one that changes what needs a restart) refused with every reason logged, the
old one serving on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from ridpool import PoolClient
from ridpool.daemon.reload import Reloader, changes, refusals
from ridpool.keys import pool_keys
from ridpool.testing import Faults, Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool
from tests.servers import wait_for

pytestmark = pytest.mark.integration
WEB, ROOMS, LOBBY = (pool_keys(PREFIX, p) for p in ("web", "rooms", "lobby"))
OTHER_APPID = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=11) as s:
        yield s


def write_config(path: Path, redis_url: str, sim_url: str, *pools: dict[str, Any], prefix: str = PREFIX) -> Path:
    """The config file a reload reads: the test's Redis and simulator, and these pools."""
    lines = [
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{prefix}"',
        f'[agora]\nbase_url = "{sim_url}"\nrate_limit = 10\ntimeout = 2.0',
    ]
    for pool in pools:
        # JSON writes strings, numbers, booleans and lists of them as TOML does
        lines.append("[[pools]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in pool.items()))
    path.write_text("\n".join(lines) + "\n")
    return path


def rooms_pool(size: int = 1) -> dict[str, Any]:
    return {"name": "rooms", "appid": APPID, "cnames": ["room-1", "room-2"], "uid": "900001", "size": size}


def lobby_pool(size: int = 2) -> dict[str, Any]:
    return {"name": "lobby", "appid": APPID, "cname": "lobby", "uid": "700001", "size": size}


def ready(r: redis.Redis, key: str) -> int:
    return int(r.zcard(key))


def members(r: redis.Redis, key: str) -> set[bytes]:
    return set(r.zrange(key, 0, -1))


async def test_sighup_resizes_adds_and_removes_pools_within_a_tick_keeping_the_entries(
    tmp_path: Path, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """web 2 -> 4, rooms dropped, lobby added: applied by the next round, web's and rooms' stored entries stay."""
    path = write_config(tmp_path / "ridpool.toml", redis_url, sim.url, web_pool(2), rooms_pool())
    config = make_config(redis_url, sim.url, web_pool(2), rooms_pool(), rate_limit=10)
    async with running(config) as [daemon]:
        await eventually(
            lambda: ready(r, WEB.queue(None)) == 2 and ready(r, ROOMS.queue("room-2")) == 1, 20, "web and rooms full"
        )
        web_before, rooms_before = members(r, WEB.queue(None)), members(r, ROOMS.queue("room-1"))
        write_config(path, redis_url, sim.url, web_pool(4), lobby_pool())
        with structlog.testing.capture_logs() as logs:
            assert await Reloader(daemon, path).reload()
            # Within a tick or two (FAST: 50 ms): the new targets are planned and published.
            await eventually(lambda: r.hget(WEB.stats, "target") == b"4", 1.0, "web's new target")
            await eventually(lambda: r.hget(LOBBY.meta, "mode") == b"named", 1.0, "lobby published")
            await eventually(lambda: ready(r, WEB.queue(None)) == 4, 20, "web filled to 4")
            await eventually(lambda: ready(r, LOBBY.queue("lobby")) == 2, 20, "lobby filled")
        assert web_before <= members(r, WEB.queue(None))  # nothing stored was dropped
        assert members(r, ROOMS.queue("room-1")) == rooms_before  # a removed pool's entries stay poppable
        with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
            client.pop("rooms", cname="room-1")
            acquired = sim.stats().acquired
            await eventually(lambda: ready(r, WEB.queue(None)) == 4, 5, "web steady")
            assert ready(r, ROOMS.queue("room-1")) == 0 and sim.stats().acquired == acquired  # not refilled
        assert [p.name for p in daemon.config.pools] == ["web", "lobby"]
    reloaded = [e for e in logs if e["event"] == "config.reloaded"]
    assert reloaded and reloaded[0]["added"] == ["lobby"] and reloaded[0]["removed"] == ["rooms"]
    assert reloaded[0]["changed"] == {"web": ["size"]}


async def test_a_broken_config_is_refused_with_every_reason_and_the_old_one_serves(
    tmp_path: Path, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Two mistakes in the new file: both logged in config.reload_refused; the pool keeps its size and refills."""
    path = write_config(tmp_path / "ridpool.toml", redis_url, sim.url, web_pool(2))
    config = make_config(redis_url, sim.url, web_pool(2), rate_limit=10)
    async with running(config) as [daemon]:
        await eventually(lambda: ready(r, WEB.queue(None)) == 2, 20, "web full")
        write_config(path, redis_url, sim.url, web_pool(-1, max_age=400))
        with structlog.testing.capture_logs() as logs:
            assert not await Reloader(daemon, path).reload()
        refused = [e for e in logs if e["event"] == "config.reload_refused"]
        assert refused and refused[0]["log_level"] == "error"
        reasons = refused[0]["reasons"]
        assert any("pools[0].size" in x for x in reasons) and any("pools[0].max_age" in x for x in reasons)
        assert daemon.config is config
        with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
            client.pop("web")
            await eventually(lambda: ready(r, WEB.queue(None)) == 2, 20, "web refilled under the old config")
        assert r.hget(WEB.meta, "size") == b"2"


async def test_what_needs_a_restart_is_refused_by_name(
    tmp_path: Path, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Another key prefix in the file: refused, naming redis; nothing of the running config changes."""
    path = write_config(tmp_path / "ridpool.toml", redis_url, sim.url, web_pool(3), prefix="elsewhere")
    config = make_config(redis_url, sim.url, web_pool(2), rate_limit=10)
    async with running(config) as [daemon]:
        await eventually(lambda: daemon.health.running, 5, "the daemon running")
        with structlog.testing.capture_logs() as logs:
            assert not await Reloader(daemon, path).reload()
        assert daemon.config is config
    [refused] = [e for e in logs if e["event"] == "config.reload_refused"]
    assert refused["reasons"] == ["redis: changes only with a restart (a reload keeps the running value)"]


def test_changes_and_refusals_name_what_differs(redis_url: str) -> None:
    """The diff a reload logs: per pool the fields changed, [agora] fields; restart-only settings refused."""
    old = make_config(redis_url, "http://a", web_pool(2), rate_limit=8)
    new = make_config(redis_url, ["http://a", "http://b"], web_pool(5, max_age=200), lobby_pool(), rate_limit=9)
    diff = changes(old, new)
    assert diff.added == ("lobby",) and diff.removed == () and diff.changed == {"web": ("size", "max_age")}
    assert diff.agora == ("base_url", "rate_limit") and not changes(old, old)
    assert refusals(old, new) == []
    assert refusals(old, make_config(redis_url, "http://a", web_pool(2), timeout=3.0)) == [
        "agora.timeout: changes only with a restart (a reload keeps the running value)"
    ]


async def test_acquires_in_flight_across_a_reload_are_stored(tmp_path: Path, r: redis.Redis, redis_url: str) -> None:
    """A slow Agora: acquires are in flight when web is resized; every ID the simulator issued ends up stored."""
    faults = Faults(latency=0.4)
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=2, faults=faults) as slow:
        path = write_config(tmp_path / "ridpool.toml", redis_url, slow.url, web_pool(12))
        config = make_config(redis_url, slow.url, web_pool(6), rate_limit=10)
        async with running(config) as [daemon]:
            await eventually(lambda: r.zcard(WEB.inflight) > 0, 10, "acquires in flight")
            assert await Reloader(daemon, path).reload()
            await eventually(lambda: ready(r, WEB.queue(None)) == 12, 30, "web filled to 12")
            await eventually(lambda: r.zcard(WEB.inflight) == 0, 10, "nothing in flight")
            assert int(r.hget(WEB.stats, "added") or 0) == slow.stats().acquired == 12


async def test_a_reload_that_changes_the_appid_never_serves_the_old_one(
    tmp_path: Path, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """appid changed by a reload: the entries of the old App ID are dropped, not popped; the pool refills."""
    path = write_config(tmp_path / "ridpool.toml", redis_url, sim.url, web_pool(3, appid=OTHER_APPID))
    config = make_config(redis_url, sim.url, web_pool(3), rate_limit=10)
    async with running(config) as [daemon]:
        await eventually(lambda: ready(r, WEB.queue(None)) == 3, 20, "web full")
        assert await Reloader(daemon, path).reload()
        # The refill's next sweep drops the queue filled under the old identity, then fills it anew.
        await eventually(lambda: int(r.hget(WEB.stats, "dropped") or 0) == 3, 5, "the old App ID's entries dropped")
        await eventually(lambda: ready(r, WEB.queue(None)) == 3, 20, "web refilled")
        with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
            assert {client.pop("web").appid for _ in range(3)} == {OTHER_APPID}


def test_sighup_to_a_running_process_reloads_and_a_broken_file_is_refused(
    tmp_path: Path, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """`ridpool run` as a process: SIGHUP applies a resize and an added pool; a broken file is refused and logged,
    the process serves on; SIGTERM still stops it with exit 0."""
    path = write_config(tmp_path / "ridpool.toml", redis_url, sim.url, web_pool(2))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = {**clean, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
    command = [sys.executable, "-m", "ridpool.cli", "run", "-c", str(path), "--log-format", "json"]
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: ready(r, WEB.queue(None)) == 2, timeout=30, what="web full")
        write_config(path, redis_url, sim.url, web_pool(3), lobby_pool(1))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ready(r, WEB.queue(None)) == 3 and ready(r, LOBBY.queue("lobby")) == 1, 30, what="reloaded")
        path.write_text(path.read_text().replace("size = 3", "size = many"))
        proc.send_signal(signal.SIGHUP)
        r.zpopmin(WEB.queue(None))  # taken by someone: the old config refills it
        wait_for(lambda: ready(r, WEB.queue(None)) == 3, 30, what="web refilled after the refusal")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "config.reloaded" in names and "daemon.stopped" in names
    refused = next(e for e in events if e["event"] == "config.reload_refused")
    assert any("invalid TOML" in reason for reason in refused["reasons"])
