"""Announced channels against a real redis-server: announce, pop, every error path, by Python, CLI and FCALL."""

from __future__ import annotations

import json
import shlex
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from ridpool import (
    AsyncPoolClient,
    CnameNotServed,
    ConfigError,
    InvalidArgument,
    NotAnnounced,
    PoolClient,
    PoolEmpty,
    PoolUnavailable,
    functions,
    plans,
)
from ridpool.daemon.config import parse_config
from ridpool.keys import pool_keys
from ridpool.meta import PoolMeta, publish

from tests.conftest import PREFIX
from tests.poolkit import APPID, make_entry, publish_pool, server_ms
from tests.servers import RedisServer, free_port
from tests.test_cli import ridpool

pytestmark = pytest.mark.integration
KEYS = pool_keys(PREFIX, "classes")


def publish_announced(r: redis.Redis, prefix: str = PREFIX, *, scene: int = 0, grace: float = 300.0) -> None:
    meta = PoolMeta("classes", APPID, (), 0, 270.0, announced=True, scene=scene, grace=grace)
    publish(r, pool_keys(prefix, "classes"), meta)


def store_for(r: redis.Redis, cname: str, *, life: float = 200.0) -> None:
    entry = make_entry(r, "classes", cname=cname, life=life)
    call = functions.add_call(KEYS, entry, queue_cname=cname)
    assert functions.parse_add(functions.execute(r, call)).value == "ADDED"


def test_an_announced_channel_pops_only_once_its_entry_is_stored(r: redis.Redis, client: PoolClient) -> None:
    """Announced but not ready is PoolEmpty; once the daemon stores its entry, pop(cname=...) returns it."""
    publish_announced(r)
    done = client.announce("classes", "class-8472", at=40, count=2)
    assert 39_000 < done.at_ms - server_ms(r) <= 40_000 and done.until_ms == done.at_ms + 300_000
    with pytest.raises(PoolEmpty):
        client.pop("classes", cname="class-8472")
    store_for(r, "class-8472")
    entry = client.pop("classes", cname="class-8472")
    assert entry.cname == "class-8472"
    assert r.hget(KEYS.announced_left, "class-8472") == b"1"  # the stored entry used one of the two up


def test_a_channel_never_announced_is_not_served(r: redis.Redis, client: PoolClient) -> None:
    """Popping a channel nobody announced raises CnameNotServed, not PoolEmpty; without cname, CNAME_REQUIRED."""
    publish_announced(r)
    with pytest.raises(CnameNotServed, match="not announced"):
        client.pop("classes", cname="class-1")
    with pytest.raises(CnameNotServed):
        client.pop("classes")


async def test_the_async_client_announces_too(r: redis.Redis, aclient: AsyncPoolClient) -> None:
    """AsyncPoolClient.announce drives the same plan: an aware datetime becomes the server instant."""
    publish_announced(r)
    at = datetime.now(UTC) + timedelta(minutes=10)
    done = await aclient.announce("classes", "class-1", at=at)
    assert abs(done.at_ms - at.timestamp() * 1000) < 1
    assert r.zscore(KEYS.announced_at, "class-1") == done.at_ms


@pytest.mark.parametrize(
    ("cname", "scene", "why"),
    [
        ("class/1", 0, "characters Agora refuses"),
        ("x" * 64, 0, "1 to 63 bytes"),
        ("", 2, "1 to 63 bytes"),
        ("y" * 129, 1, "128 bytes"),
    ],
)
def test_a_channel_name_agora_would_refuse_is_refused_at_announce_time(
    r: redis.Redis, client: PoolClient, cname: str, scene: int, why: str
) -> None:
    """The channel name is checked against Agora's rules for the pool's scene; nothing is recorded."""
    publish_announced(r, scene=scene)
    with pytest.raises(InvalidArgument, match=why):
        client.announce("classes", cname, at=10)
    assert not r.exists(KEYS.announced)


def test_other_languages_get_the_channel_check_from_the_function_itself(r: redis.Redis) -> None:
    """FCALL ridpool_announce refuses a bad channel name, a bad `at` and a far `at` by itself."""
    publish_announced(r)
    functions.load_library(r)
    call = functions.announce_call(KEYS, "class-1", at="+1000")
    base = ["FCALL", call.function, len(call.keys), *call.keys]
    for args, code in (
        (["bad/name", "+1000", 1], "BAD_CNAME"),
        (["class-1", "tomorrow", 1], "BAD_ARGUMENT"),
        (["class-1", f"+{8 * 86400 * 1000}", 1], "BAD_ARGUMENT"),
        (["class-1", "+1000", 0], "BAD_ARGUMENT"),
    ):
        with pytest.raises(redis.ResponseError, match=code):
            r.execute_command(*base, *args)


@pytest.mark.parametrize(
    "at",
    [
        8 * 86400,  # more than 7 days ahead
        datetime(2026, 11, 26, 9, 0),  # naive: which 09:00?
        float("nan"),
        "+40",
    ],
)
def test_a_bad_at_is_refused_before_redis_is_touched(client: PoolClient, at: object) -> None:
    """`at` must be an aware datetime or finite seconds from now, at most 7 days ahead."""
    with pytest.raises(InvalidArgument, match="at must"):
        client.announce("classes", "class-1", at=at)  # type: ignore[arg-type]


def test_an_announcement_for_the_past_is_served_as_soon_as_possible(r: redis.Redis, client: PoolClient) -> None:
    """A negative `at` (or a past datetime) is accepted: its instant is now, its end now + grace."""
    publish_announced(r, grace=60)
    done = client.announce("classes", "class-1", at=-30)
    now = server_ms(r)
    assert now - 1000 < done.at_ms <= now and done.until_ms - done.at_ms == 60_000


def test_announcements_hold_no_id_and_expire_by_themselves(r: redis.Redis, client: PoolClient) -> None:
    """Every announcement key expires with the last announcement's end (at + grace)."""
    publish_announced(r, grace=5)
    client.announce("classes", "a", at=10)
    done = client.announce("classes", "b", at=20)
    for key in (KEYS.announced, KEYS.announced_at, KEYS.announced_left):
        assert r.pexpiretime(key) == done.until_ms


def test_announce_to_a_pool_that_takes_none_or_no_pool(r: redis.Redis, client: PoolClient) -> None:
    """A pool of configured channels refuses announcements (NotAnnounced); an unknown pool is UnknownPool."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1",))
    with pytest.raises(NotAnnounced):
        client.announce("rooms", "room-9", at=10)
    with pytest.raises(Exception, match="no daemon has published"):
        client.announce("nowhere", "room-9", at=10)


def test_the_daemon_sweep_replaces_an_entry_about_to_expire_while_pending(r: redis.Redis, client: PoolClient) -> None:
    """ridpool_sweep retires an entry of a pending announcement that would expire within `retire_ms`, counts it to
    acquire again, and names the channel in the change feed; a channel with no announcement is left as it is."""
    publish_announced(r)
    client.announce("classes", "c1", at=100, count=2)
    store_for(r, "c1", life=5)
    store_for(r, "c1", life=200)
    r.delete(KEYS.changes)
    call = functions.sweep_call(KEYS, ["c1", "c2"], retire_ms=10_000)
    swept = functions.parse_sweep(functions.execute(r, call))
    state, other = swept.states
    assert (state.live, state.retired, other.live, other.retired) == (1, 1, 0, 0)
    assert r.hget(KEYS.announced_left, "c1") == b"1" and r.hget(KEYS.announced_left, "c2") is None
    assert r.zscore(KEYS.changes, "c1") is not None


def test_the_readme_redis_cli_fcall_announces(r: redis.Redis, redis_server: RedisServer) -> None:
    """The exact redis-cli announce line of the README records the announcement (the contract for other languages)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [line] = [ln for ln in readme.splitlines() if ln.startswith("redis-cli") and "FCALL ridpool_announce" in ln]
    publish_announced(r, "ridpool")
    functions.load_library(r)
    argv = shlex.split(line.replace("-p 6379", f"-p {redis_server.port}"))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout.split()
    assert int(out[1]) - int(out[0]) == 300_000
    assert r.zscore("ridpool:{classes}:ann:at", "class-8472") == int(out[0])


# -- the CLI --------------------------------------------------------------------------------------------


def test_ridpool_announce_prints_the_announcement(r: redis.Redis, redis_url: str) -> None:
    """`ridpool announce` exits 0 and prints pool, cname, at, until (server ms) and count."""
    publish_announced(r)
    at = "+40"
    done = ridpool(
        "announce",
        "classes",
        "--cname",
        "class 1",
        "--at",
        at,
        "--count",
        "3",
        "--redis-url",
        redis_url,
        "--prefix",
        PREFIX,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cname"] == "class 1" and out["count"] == 3 and out["until"] - out["at"] == 300_000


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--cname", "bad/name", "--at", "+40"], 2, "refuses"),
        (["--cname", "c", "--at", "2026-11-26T09:00:00"], 2, "offset"),
        (["--cname", "c", "--at", "tomorrow"], 2, "ISO-8601"),
        (["--cname", "c", "--at", "+700000"], 2, "--at"),
        (["--cname", "c", "--at", "+40", "--count", "0"], 2, "--count"),
    ],
)
def test_ridpool_announce_exits_2_for_a_bad_argument(
    r: redis.Redis, redis_url: str, args: list[str], code: int, says: str
) -> None:
    """Bad channel names, instants and counts exit 2 with a one-line message, no traceback."""
    publish_announced(r)
    done = ridpool("announce", "classes", *args, "--redis-url", redis_url, "--prefix", PREFIX)
    assert done.returncode == code and says in done.stderr and "Traceback" not in done.stderr


def test_ridpool_announce_exits_4_for_an_unknown_pool_or_one_without_announcements(
    r: redis.Redis, redis_url: str
) -> None:
    """Unknown pool: 4; a pool of configured channels: 4, saying it takes no announcements."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1",))
    for pool, says in (("nowhere", "no daemon"), ("rooms", "does not take announcements")):
        done = ridpool("announce", pool, "--cname", "c", "--at", "+5", "--redis-url", redis_url, "--prefix", PREFIX)
        assert done.returncode == 4 and says in done.stderr, done.stderr


def test_ridpool_announce_exits_5_when_redis_is_down() -> None:
    """No Redis on the port: exit 5 naming it."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = ridpool("announce", "classes", "--cname", "c", "--at", "+5", "--redis-url", url)
    assert done.returncode == 5 and "unavailable" in done.stderr, done.stderr


def test_ridpool_announce_with_a_config_checks_before_touching_redis(tmp_path: Path) -> None:
    """With -c, an unknown pool or one without announcements exits 4 and a bad name 2, without Redis."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: any Redis use would exit 5
    config = tmp_path / "c.toml"
    config.write_text(
        f'[redis]\nurl = "{url}"\n[agora]\nbase_url = "http://127.0.0.1:1"\n'
        f'[[pools]]\nname = "classes"\nappid = "{APPID}"\nannounced = true\nuid = "1"\n'
        f'[[pools]]\nname = "rooms"\nappid = "{APPID}"\ncnames = ["r1"]\nuid = "1"\n'
    )
    for pool, cname, code in (("nowhere", "c", 4), ("rooms", "c", 4), ("classes", "bad/name", 2)):
        done = ridpool("announce", pool, "--cname", cname, "--at", "+5", "-c", str(config))
        assert done.returncode == code, done.stderr
    assert ridpool("announce", "classes", "--cname", "ok", "--at", "+5", "-c", str(config)).returncode == 5


def test_plans_announce_at_reads_instants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds become '+ms' from the server's now (never below 0); an aware datetime becomes Unix ms."""
    assert plans.announce_at(40) == "+40000" and plans.announce_at(-5) == "+0"
    assert plans.announce_at(datetime(2026, 11, 26, 9, 0, tzinfo=UTC), wall=lambda: 1795680000.0) == "1795683600000"


def test_leases_for_an_announced_channel_never_exceed_what_it_lacks(r: redis.Redis, client: PoolClient) -> None:
    """A stale plan (target 5) leases only what the announcement still lacks, minus leases already held."""
    publish_announced(r)
    client.announce("classes", "c1", at=10, count=2)
    store_for(r, "c1")  # one of the two is stored: one left

    def reserve(base: str) -> tuple[functions.Lease, ...]:
        call = functions.reserve_call(KEYS, [functions.Want("c1", 5, want=5)], cap=10, lease_ms=15_000, token_base=base)
        return functions.parse_reserve(functions.execute(r, call)).slots[0].leases

    assert len(reserve("a")) == 1
    assert reserve("b") == ()  # the one left is leased already


def test_announce_with_redis_down_is_pool_unavailable() -> None:
    """No Redis: announce raises PoolUnavailable naming the server, never another error."""
    down = PoolClient.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix=PREFIX)
    with down, pytest.raises(PoolUnavailable, match="unavailable"):
        down.announce("classes", "class-1", at=10)


ISSUE_POOL = """
[[pools]]
name = "classes"
appid = "0123456789abcdef0123456789abcdef"
announced = true
uid = "527841"          # or uid_range, as for other pools
scene = 0
max_age = 270
"""


def test_the_issues_announced_pool_table_is_a_valid_config() -> None:
    """The `announced = true` table as the issue writes it validates; with a cname beside it, it does not."""
    base = '[agora]\nbase_url = "https://api.sd-rtn.com"\n'
    config = parse_config(tomllib.loads(base + ISSUE_POOL))
    [pool] = config.pools
    assert pool.announced and pool.announce_grace == 300 and pool.slots == ()
    with pytest.raises(ConfigError, match="announced pool takes its channels from announcements"):
        parse_config(tomllib.loads(base + ISSUE_POOL + 'cname = "x"\n'))


def test_an_entry_is_not_replaced_once_its_announcement_has_ended(r: redis.Redis, client: PoolClient) -> None:
    """After `at` + grace the announcement is gone: a dying entry stays (and expires unused), nothing is re-acquired."""
    publish_announced(r, grace=0)
    client.announce("classes", "c1", at=0)  # ends at once: its instant is now and its grace 0
    store_for(r, "c1", life=5)
    functions.execute(r, functions.announce_end_call(KEYS))
    call = functions.sweep_call(KEYS, ["c1"], retire_ms=10_000)
    [state] = functions.parse_sweep(functions.execute(r, call)).states
    assert state.retired == 0 and state.live == 1
    assert not r.exists(KEYS.announced, KEYS.announced_at, KEYS.announced_left)
