"""The `ridpool` command as an operator runs it: real processes, real Redis, the simulator over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from ridpool import PoolClient, functions
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET, run_until_filled, web_config_toml
from tests.poolkit import fill, publish_pool

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent
RIDPOOL = [sys.executable, "-m", "ridpool.cli"]


def ridpool(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RIDPOOL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_check_config_accepts_the_example_config() -> None:
    """config/example.toml (the issue's file as written) validates with exit 0."""
    done = ridpool("check-config", "-c", "config/example.toml")
    assert done.returncode == 0, done.stderr
    assert "web (1x20)" in done.stdout and "rooms (3x3)" in done.stdout


def test_pop_prints_one_json_object_with_what_start_needs(r: redis.Redis, redis_url: str) -> None:
    """`ridpool pop` prints resourceId, appid, cname, uid (a string), pool and expiresIn (ms, as FCALL), exit 0."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2"))
    [entry] = fill(r, PREFIX, "rooms", 1, cname="room-2", named=True)
    done = ridpool("pop", "rooms", "--cname", "room-2", "--min-ttl", "5", "--redis-url", redis_url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["resourceId"] == entry.resource_id and out["cname"] == "room-2" and out["uid"] == entry.uid
    assert (
        out["appid"] == entry.appid
        and out["pool"] == "rooms"
        and 0 < out["expiresIn"] <= 200_000
        and isinstance(out["expiresIn"], int)
    )


def test_status_shows_pools_and_counters_as_table_and_json(r: redis.Redis, redis_url: str) -> None:
    """`ridpool status` reads every published pool: size against target, pops, state; --json for machines."""
    publish_pool(r, PREFIX, "web", size=4)
    fill(r, PREFIX, "web", 3, life=270)
    PoolClient(redis.Redis.from_url(redis_url), prefix=PREFIX).pop("web")
    table = ridpool("status", "--redis-url", redis_url, "--prefix", PREFIX)
    assert table.returncode == 0, table.stderr
    assert "web" in table.stdout and "2/4" in table.stdout and "live replicas: none" in table.stdout
    data = json.loads(ridpool("status", "--json", "--redis-url", redis_url, "--prefix", PREFIX).stdout)
    [web] = data["pools"]
    assert (web["size"], web["target"], web["pops"], web["state"]) == (2, 4, 1, "ok")


def test_a_held_pool_shows_as_held_in_stats_and_status(r: redis.Redis, redis_url: str) -> None:
    """A pool held after failures (ridpool_hold, 30 s): stats().held_for, the status table's `held` column and
    `heldFor` in --json say how long; every other figure is as it was; an unheld pool shows none."""
    publish_pool(r, PREFIX, "web", size=4)
    fill(r, PREFIX, "web", 2)
    client = PoolClient(redis.Redis.from_url(redis_url), prefix=PREFIX)
    assert client.stats("web").held_for is None
    functions.execute(client.redis, functions.hold_call(pool_keys(PREFIX, "web"), 30))
    held = client.stats("web").held_for
    assert held is not None and 29 < held <= 30
    table = ridpool("status", "--redis-url", redis_url, "--prefix", PREFIX)
    header, _, row = table.stdout.splitlines()[:3]
    assert "held" in header.split() and "30s" in row.split() and "2/4" in row.split()
    data = json.loads(ridpool("status", "--json", "--redis-url", redis_url, "--prefix", PREFIX).stdout)
    [web] = data["pools"]
    assert 29 < web["heldFor"] <= 30 and (web["size"], web["target"], web["state"]) == (2, 4, "ok")


def test_ridpool_run_fills_pools_and_exits_0_within_5_s_of_sigterm(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    """The daemon as a process: fills its pool, logs JSON events without the secret, SIGTERM ends it cleanly."""
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET) as sim:
        config = tmp_path / "ridpool.toml"
        config.write_text(web_config_toml(redis_url, sim.url, 5))
        queue = pool_keys(PREFIX, "web").queue(None)
        done, took = run_until_filled([*RIDPOOL, "run", "-c", str(config)], lambda: r.zcard(queue) == 5, cwd=ROOT)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0 and took < 5, (done.returncode, took, err[-2000:])
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert {"daemon.started", "refill.stored", "daemon.stopping", "daemon.stopped"} <= set(events)
    assert SECRET not in out + err and "Traceback" not in err


def test_pop_loads_nothing_of_the_daemon_the_simulator_or_the_demo(r: redis.Redis, redis_url: str) -> None:
    """`ridpool pop` imports no daemon module nor its dependencies (what keeps its start-up short)."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    code = (
        "import sys\nfrom ridpool.cli import main\n"
        f"code = main(['pop', 'web', '--redis-url', '{redis_url}', '--prefix', '{PREFIX}'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'pydantic', 'apscheduler', "
        "'structlog', 'rich', 'tenacity', 'prometheus_client') or m.startswith(('ridpool.daemon', 'ridpool.testing'))),"
        " code, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr.strip() == "[] 0", done.stderr
