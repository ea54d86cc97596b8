"""Bad input through the `ridpool` command: a clear message naming what is wrong, its exit code, no traceback.

Each case runs the installed command in a subprocess, as an operator would. Exit codes (daemon/cli.py): 2 invalid
configuration or arguments, 3 nothing fresh enough in the pool, 4 unknown pool or channel, 5 Redis unreachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import PREFIX
from tests.poolkit import APPID, publish_pool
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RIDPOOL = Path(sys.executable).with_name("ridpool")
ROOMS = ("room-1", "room-2", "room-3")

VALID_POOL = f"""
[[pools]]
name = "web"
appid = "{APPID}"
cname = "web-{{uuid}}"
uid = "527841"
scene = 1
size = 2
"""
VALID_AGORA = """
[agora]
base_url = "http://127.0.0.1:9"
"""


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def ridpool(*argv: str, env: dict[str, str] | None = None) -> Outcome:
    """Run the command with a clean environment (no Redis URL, no Agora account unless given)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AGORA_", "RIDPOOL_"))}
    done = subprocess.run(
        [str(RIDPOOL), *argv], env={**base, **(env or {})}, capture_output=True, text=True, timeout=30, check=False
    )
    outcome = Outcome(done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    return outcome


def assert_refused(outcome: Outcome, code: int, command: str, *named: str, max_lines: int = 2) -> None:
    """Exit `code`, nothing on stdout, a short message on stderr from `ridpool COMMAND` naming each of `named`."""
    assert outcome.code == code, outcome
    assert outcome.stdout == ""
    lines = outcome.stderr.strip().splitlines()
    assert lines and lines[0].startswith(f"ridpool {command}:"), outcome.stderr
    assert len(lines) <= max_lines, outcome.stderr
    for name in named:
        assert name in outcome.stderr, (name, outcome.stderr)


def assert_usage_error(outcome: Outcome, command: str, *named: str) -> None:
    """argparse's refusal: exit 2, usage, then one line naming the argument and the value."""
    assert outcome.code == 2 and outcome.stdout == "", outcome
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ridpool {command}: error: "), outcome.stderr
    for name in named:
        assert name in last, (name, last)


# -- configuration ---------------------------------------------------------------------------------------

FAMILIES = {
    "redis settings": (
        '[redis]\nurl = "http://127.0.0.1:6379"\nkey_prefix = "rid{pool}"\nsocket_timeout = 0\n'
        + VALID_AGORA
        + VALID_POOL,
        ["redis.url", "redis.key_prefix", "redis.socket_timeout"],
    ),
    "agora settings": (
        '[agora]\nbase_url = "https://api.sd-rtn.com/v1"\nrate_limit = 0\ntimeout = 61\nmax_in_flight = 0\n'
        'account = "a/b"\n' + VALID_POOL,
        ["agora.base_url", "agora.rate_limit", "agora.timeout", "agora.max_in_flight", "agora.account"],
    ),
    "pool identity": (
        VALID_AGORA + f'[[pools]]\nname = "web pool"\nappid = "{APPID[:-1]}g"\ncname = "lobby"\nuid = "7"\n',
        ["pools[0].name", "pools[0].appid"],
    ),
    "channels and uids": (
        VALID_AGORA
        + f'[[pools]]\nname = "a"\nappid = "{APPID}"\ncname = "room/1"\nuid = "0"\n'
        + f'[[pools]]\nname = "b"\nappid = "{APPID}"\nuid_range = [999999, 900000]\n',
        ["pools[0].cname", "pools[0].uid", "pools[1].cname", "pools[1].uid_range"],
    ),
    "clientRequest fields": (
        VALID_AGORA
        + f'[[pools]]\nname = "a"\nappid = "{APPID}"\ncname = "lobby"\nuid = "7"\nregion = "US"\nscene = 3\n'
        + 'resource_expired_hour = 0\nregion_affinity = 5\nexclude_resource_ids = [""]\n'
        + "start_parameter = { day = 2024-01-01 }\n",
        [
            "pools[0].region",
            "pools[0].scene",
            "pools[0].resource_expired_hour",
            "pools[0].region_affinity",
            "pools[0].exclude_resource_ids[0]",
            "pools[0].start_parameter",
        ],
    ),
    "sizes and ages": (
        VALID_AGORA
        + f'[[pools]]\nname = "a"\nappid = "{APPID}"\ncname = "lobby"\nuid = "7"\nsize = -1\nmax_age = 300\n'
        + "max_in_flight = 0\n",
        ["pools[0].size", "pools[0].max_age", "pools[0].max_in_flight"],
    ),
    "types": (
        '[agora]\nbase_url = "http://127.0.0.1:9"\nrate_limit = "8"\n'
        + f'[[pools]]\nname = "a"\nappid = "{APPID}"\ncname = "lobby"\nuid = 7\nsize = true\n',
        ["agora.rate_limit", "pools[0].uid", "pools[0].size"],
    ),
    "unknown and duplicate keys": (
        'pool = []\n[agora]\nbase_url = "http://127.0.0.1:9"\nrate = 8\n' + VALID_POOL + VALID_POOL + "sise = 3\n",
        ["pool: unknown field", "agora.rate: unknown field", "pools[1].sise: unknown field", "pools[1].name"],
    ),
    "missing sections": ("[redis]\n", ["agora: required", "pools: at least one"]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_check_config_names_every_invalid_field_of_a_family_at_once(tmp_path: Path, family: str) -> None:
    """Each family of invalid fields: exit 2, one line per problem naming its field path, nothing else."""
    text, paths = FAMILIES[family]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    outcome = ridpool("check-config", "-c", str(config))
    assert_refused(outcome, 2, "check-config", "invalid configuration", *paths, max_lines=1 + 2 * len(paths))
    problems = [line for line in outcome.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) >= len(paths)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b'[agora\nbase_url = "x"\n', ["invalid TOML at line 1, column"]),
        (b"[agora]\nbase_url = \n", ["invalid TOML at line 2"]),
        (b"\xff\xfe[agora]\n", ["not UTF-8"]),
        (None, ["file not found"]),
        ("dir", ["cannot read"]),
    ],
    ids=["unclosed table", "missing value", "not utf-8", "missing file", "a directory"],
)
def test_an_unreadable_or_malformed_config_file_is_named_with_what_is_wrong(
    tmp_path: Path, content: bytes | str | None, named: list[str]
) -> None:
    """Malformed TOML, bytes that are not UTF-8, a missing file or a directory: exit 2, naming the file."""
    config = tmp_path / "ridpool.toml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    elif content == "dir":
        config.mkdir()
    assert_refused(ridpool("check-config", "-c", str(config)), 2, "check-config", str(config), *named, max_lines=2)


def test_a_redis_password_in_an_invalid_url_is_never_echoed(tmp_path: Path) -> None:
    """redis.url with the wrong scheme is refused naming the field, without repeating the URL's password."""
    config = tmp_path / "ridpool.toml"
    config.write_text('[redis]\nurl = "http://user:Hunter2-pw@127.0.0.1:6379"\n' + VALID_AGORA + VALID_POOL)
    outcome = ridpool("check-config", "-c", str(config))
    assert_refused(outcome, 2, "check-config", "redis.url")
    assert "Hunter2-pw" not in outcome.stderr


def test_run_refuses_an_invalid_config_before_touching_redis(tmp_path: Path, r: redis.Redis, redis_url: str) -> None:
    """`ridpool run` with a bad field exits 2 at once: no key, no function library written to Redis."""
    config = tmp_path / "ridpool.toml"
    pool = VALID_POOL.replace("size = 2", "size = -2")
    config.write_text(f'[redis]\nurl = "{redis_url}"\n' + VALID_AGORA + pool)
    env = {"AGORA_CUSTOMER_ID": "c", "AGORA_CUSTOMER_SECRET": "s"}
    assert_refused(ridpool("run", "-c", str(config), env=env), 2, "run", "pools[0].size")
    assert r.dbsize() == 0 and r.function_list() == []


def test_run_without_the_agora_account_in_the_environment_names_the_variables(
    tmp_path: Path, r: redis.Redis, redis_url: str
) -> None:
    """No AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET: exit 2 naming both, before touching Redis."""
    config = tmp_path / "ridpool.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n' + VALID_AGORA + VALID_POOL)
    outcome = ridpool("run", "-c", str(config))
    assert_refused(outcome, 2, "run", "AGORA_CUSTOMER_ID", "AGORA_CUSTOMER_SECRET", max_lines=3)
    assert r.dbsize() == 0 and r.function_list() == []


# -- pop and status --------------------------------------------------------------------------------------


@pytest.fixture
def published(r: redis.Redis, redis_url: str) -> str:
    """A Redis where a daemon published an (empty) template pool `web` and a named pool `rooms`."""
    publish_pool(r, PREFIX, "web")
    publish_pool(r, PREFIX, "rooms", cnames=ROOMS)
    return redis_url


def pop(url: str, *argv: str) -> Outcome:
    return ridpool("pop", *argv, "--redis-url", url, "--prefix", PREFIX)


def test_pop_from_an_unknown_pool_exits_4_naming_it(published: str) -> None:
    """A pool no daemon published: exit 4, naming the pool."""
    assert_refused(pop(published, "nobody"), 4, "pop", "'nobody'", "no daemon has published")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["rooms", "--cname", "room-9"], ["'room-9'", "does not serve"]),
        (["rooms"], ["'rooms'", "pop with the cname"]),
        (["web", "--cname", "web-abc"], ["'web'", "pop without a cname"]),
    ],
    ids=["cname not served", "cname missing", "cname for a template pool"],
)
def test_pop_for_a_channel_the_pool_does_not_serve_exits_4(published: str, argv: list[str], named: list[str]) -> None:
    """A channel the pool does not serve (or a missing/unneeded cname): exit 4, saying which and why."""
    assert_refused(pop(published, *argv), 4, "pop", *named)


def test_pop_from_an_empty_pool_exits_3(published: str) -> None:
    """A known pool with nothing fresh enough: exit 3, naming the pool and the life asked for."""
    assert_refused(pop(published, "web", "--min-ttl", "30"), 3, "pop", "'web'", "30 s")


@pytest.mark.parametrize("value", ["-1", "300", "nan", "inf", "ten"])
def test_pop_with_an_invalid_min_ttl_exits_2_naming_the_option(value: str) -> None:
    """--min-ttl outside 0 to below 300 seconds, or not a number: exit 2 naming the option and the value."""
    outcome = ridpool("pop", "web", "--min-ttl", value, "--redis-url", "redis://127.0.0.1:9")
    assert_usage_error(outcome, "pop", "--min-ttl", repr(value))


def test_pop_with_an_invalid_wait_exits_2_naming_the_option() -> None:
    """--wait below 0: exit 2 naming the option."""
    outcome = ridpool("pop", "web", "--wait", "-0.5", "--redis-url", "redis://127.0.0.1:9")
    assert_usage_error(outcome, "pop", "--wait", "'-0.5'")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["we{b}"], ["pool name", "'we{b}'"]),
        (["web", "--cname", ""], ["cname must not be empty"]),
        (["web", "--prefix", "a b"], ["key prefix", "'a b'"]),
    ],
    ids=["pool name", "empty cname", "key prefix"],
)
def test_pop_with_a_malformed_name_exits_2_before_reaching_redis(argv: list[str], named: list[str]) -> None:
    """A pool name, cname or prefix that cannot form a key: exit 2 naming it (no Redis needed to say so)."""
    outcome = ridpool("pop", *argv, "--redis-url", f"redis://127.0.0.1:{free_port()}")
    assert_refused(outcome, 2, "pop", *named)


@pytest.mark.parametrize("command", [["pop", "web"], ["status"], ["status", "--json"]])
def test_a_redis_url_with_no_server_exits_5_naming_the_address(command: list[str]) -> None:
    """Nothing listening at the Redis URL: exit 5 naming host:port (never an empty pool), password not shown."""
    port = free_port()
    outcome = ridpool(*command, "--redis-url", f"redis://:Pw-7f3a@127.0.0.1:{port}/0")
    assert_refused(outcome, 5, command[0], f"127.0.0.1:{port}", "unavailable")
    assert "Pw-7f3a" not in outcome.stderr


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379/0", "redis://127.0.0.1:notaport/0"],
    ids=["wrong scheme", "port not a number"],
)
def test_a_malformed_redis_url_on_the_command_line_exits_2_naming_it(url: str) -> None:
    """A --redis-url redis-py cannot parse is invalid input (exit 2, a one-line reason), not a crash."""
    outcome = ridpool("pop", "web", "--redis-url", url)
    assert_refused(outcome, 2, "pop", "Redis URL")


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0", "redis://127.0.0.1:6390/0?socket_timeout=abc"],
    ids=["port not a number", "port out of range", "bad option"],
)
def test_a_redis_url_in_the_config_that_cannot_be_used_fails_check_config(tmp_path: Path, url: str) -> None:
    """check-config refuses a redis.url that `run` could not connect with (exit 2 naming redis.url)."""
    config = tmp_path / "ridpool.toml"
    config.write_text(f'[redis]\nurl = "{url}"\n' + VALID_AGORA + VALID_POOL)
    assert_refused(ridpool("check-config", "-c", str(config)), 2, "check-config", "redis.url")
