"""Redis settings from the environment: RIDPOOL_REDIS_URL and RIDPOOL_REDIS_PASSWORD, for every command, with
command-line flags over the environment over the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from ridpool import ConfigError, InvalidArgument, settings
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET, run_until_filled, web_config_toml
from tests.poolkit import fill, publish_pool
from tests.servers import RedisProc, processes
from tests.test_cli import RIDPOOL, ridpool

FILE = "redis://file-host:6379/0"
ENV_URL = "redis://env-host:6380/1"


@pytest.mark.parametrize(
    ("flag", "environ", "want", "source"),
    [
        (None, {}, FILE, "[redis] url"),
        (None, {"RIDPOOL_REDIS_URL": ENV_URL}, ENV_URL, "RIDPOOL_REDIS_URL"),
        (None, {"RIDPOOL_REDIS_PASSWORD": "p@ss:w"}, "redis://:p%40ss%3Aw@file-host:6379/0", "[redis] url with"),
        (
            None,
            {"RIDPOOL_REDIS_URL": "redis://bob:old@env-host/2", "RIDPOOL_REDIS_PASSWORD": "new"},
            "redis://bob:new@env-host/2",
            "RIDPOOL_REDIS_URL with",
        ),
        ("redis://flag:1/0", {"RIDPOOL_REDIS_URL": ENV_URL, "RIDPOOL_REDIS_PASSWORD": "x"}, "redis://flag:1/0", "--"),
    ],
)
def test_flags_win_over_the_environment_which_wins_over_the_file(
    flag: str | None, environ: dict[str, str], want: str, source: str
) -> None:
    """The documented precedence: --redis-url, else RIDPOOL_REDIS_URL, else the file; RIDPOOL_REDIS_PASSWORD
    replaces the password of a URL that did not come from the command line."""
    url, where = settings.redis_url(FILE, flag=flag, environ=environ)
    assert url == want and where.startswith(source)


def test_a_password_from_the_environment_reaches_redis_py() -> None:
    """The password-only variable ends up where redis-py reads it, with the URL's user kept."""
    found = settings.parse(
        {"redis": {"url": "redis://ridpool@127.0.0.1:7000/3"}}, environ={"RIDPOOL_REDIS_PASSWORD": "s3cr3t"}
    )
    kwargs = found.redis.connect().connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["port"], kwargs["db"]) == ("ridpool", "s3cr3t", 7000, 3)
    assert "s3cr3t" not in repr(found)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"redis": {"url": "localhost:6379"}}, "[redis] url: must be a Redis URL"),
        ({"redis": {"mode": "clustered"}}, "redis.mode: must be one of standalone, cluster, sentinel"),
        ({"redis": {"socket_timeout": "5"}}, "redis.socket_timeout: must be a int or float"),
        ({"agora": {"rate_limit": 0}}, "agora.rate_limit: must be greater than 0"),
        ({"pools": [{"size": 3}]}, "pools[0].name: required"),
    ],
)
def test_what_a_starter_reads_of_a_config_is_checked_with_the_field_named(data: dict[str, object], named: str) -> None:
    """A starter's reading of the daemon's file names the field that is wrong."""
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        settings.parse(data, environ={})


def test_a_malformed_url_in_the_environment_is_named_by_its_variable() -> None:
    """RIDPOOL_REDIS_URL that redis-py cannot use is a ConfigError naming the variable, not the URL."""
    with pytest.raises(ConfigError, match="RIDPOOL_REDIS_URL: must be a Redis URL") as info:
        settings.parse({}, environ={"RIDPOOL_REDIS_URL": "http://user:hunter2@x"})
    assert "hunter2" not in str(info.value)
    with pytest.raises(InvalidArgument, match="--redis-url must be a Redis URL"):
        settings.parse({}, flag_url="localhost:6379", environ={})


@pytest.mark.integration
def test_every_command_reads_the_password_from_the_environment(tmp_path: Path) -> None:
    """A Redis with a password, a config file without it: `run`, `status`, `pop` and `announce` reach it with
    RIDPOOL_REDIS_PASSWORD; without the variable they are refused (exit 6)."""
    with processes(RedisProc("--requirepass", "pw-from-env")) as [server]:
        r = server.client(password="pw-from-env")
        config = tmp_path / "ridpool.toml"
        config.write_text(web_config_toml(server.url, "http://127.0.0.1:1", 0))
        env = {"RIDPOOL_REDIS_PASSWORD": "pw-from-env"}
        refused = ridpool("status", "-c", str(config), "--json")
        assert refused.returncode == 6, refused.stderr
        with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET) as sim:
            config.write_text(web_config_toml(server.url, sim.url, 2))
            queue = pool_keys(PREFIX, "web").queue(None)
            done, _ = run_until_filled(
                [*RIDPOOL, "run", "-c", str(config)],
                lambda: r.zcard(queue) == 2,
                cwd=tmp_path,
                env=env,
            )
        assert done.returncode == 0, done.stderr[-2000:]
        shown = ridpool("status", "-c", str(config), "--json", env=env)
        assert shown.returncode == 0 and json.loads(shown.stdout)["pools"][0]["pool"] == "web", shown.stderr
        popped = ridpool("pop", "web", "-c", str(config), env=env)
        assert popped.returncode == 0 and json.loads(popped.stdout)["pool"] == "web", popped.stderr
        r.close()


@pytest.mark.integration
def test_ridpool_redis_url_points_every_command_at_another_redis(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The file names a Redis that is not there; RIDPOOL_REDIS_URL the one that is: pop and status use it."""
    config = tmp_path / "ridpool.toml"
    config.write_text(web_config_toml("redis://127.0.0.1:1/0", "http://127.0.0.1:1", 1))
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    env = {"RIDPOOL_REDIS_URL": redis_url}
    popped = ridpool("pop", "web", "-c", str(config), env=env)
    assert popped.returncode == 0 and json.loads(popped.stdout)["resourceId"] == entry.resource_id, popped.stderr
    assert ridpool("status", "-c", str(config), "--check", env=env).returncode == 13  # reached: no replica live
    assert ridpool("status", "-c", str(config), "--check").returncode == 5  # the file's Redis: unreachable
