"""Messages that say what is wrong and what to do, with the documented exit code: each case runs the installed
`ridpool` command as an operator would, against a real redis-server (and the simulator where Agora answers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ridpool import cli
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET
from tests.poolkit import APPID, fill, publish_pool
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).parent.parent
RIDPOOL = Path(sys.executable).with_name("ridpool")
CODES = {v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)}


def ridpool(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RIDPOOL_", "AGORA_")) and k != "PYTHONPATH"}
    return subprocess.run(
        [str(RIDPOOL), *argv], capture_output=True, text=True, timeout=45, check=False, env={**clean, **(env or {})}
    )


def one_line(done: subprocess.CompletedProcess[str], code: int, command: str) -> str:
    """The command exited `code` with one line on stderr naming it, no traceback; returns that line."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ridpool {command}: "), done.stderr
    return lines[0]


@pytest.fixture
def acl_user(r: redis.Redis) -> Iterator[str]:
    """A Redis user `limited` (password `pw-limited`) that may run everything but SMEMBERS."""
    r.execute_command("ACL", "SETUSER", "limited", "on", ">pw-limited", "~*", "&*", "+@all", "-smembers")
    yield "limited"
    r.execute_command("ACL", "DELUSER", "limited")


def test_a_wrong_password_and_a_missing_permission_are_told_apart(redis_url: str, acl_user: str) -> None:
    """WRONGPASS says to check the password (not to grant an ACL); NOPERM names the command to grant; both 6."""
    server = redis_url.removeprefix("redis://")
    wrong = one_line(ridpool("status", "--redis-url", f"redis://{acl_user}:wrong@{server}"), 6, "status")
    denied = one_line(ridpool("status", "--redis-url", f"redis://{acl_user}:pw-limited@{server}"), 6, "status")
    assert "refused the credentials" in wrong and "password" in wrong and "ACL" not in wrong
    assert "not allowed" in denied and "smembers" in denied.lower() and "credentials" not in denied


def test_a_url_without_a_scheme_gets_the_whole_url_form(redis_url: str) -> None:
    """`--redis-url localhost:6379`: exit 2 naming the schemes and an example, not a cut-off message."""
    line = one_line(ridpool("status", "--redis-url", "localhost:6379"), 2, "status")
    assert "redis://" in line and "rediss://" in line and "unix://" in line and line.endswith(")")


def test_a_database_the_server_lacks_exits_2_saying_so(redis_url: str) -> None:
    """redis://HOST:PORT/99 on a server of 16 databases: exit 2 (a bad URL), naming the database setting."""
    line = one_line(ridpool("status", "--redis-url", redis_url.rsplit("/", 1)[0] + "/99"), 2, "status")
    assert "database" in line and "redis://HOST:6379/0" in line


def test_a_key_prefix_mismatch_names_the_prefix_and_the_pools_under_others(redis_url: str, r: redis.Redis) -> None:
    """A pool published under prefix `ridpool`, popped with `--prefix t`: exit 4 naming both prefixes and the pool;
    `status --check` says the same."""
    publish_pool(r, "ridpool", "web")
    popped = one_line(ridpool("pop", "web", "--redis-url", redis_url, "--prefix", PREFIX), 4, "pop")
    assert f"key prefix {PREFIX!r}" in popped and "other prefixes: 'ridpool': web" in popped
    checked = one_line(ridpool("status", "--check", "--redis-url", redis_url, "--prefix", PREFIX), 13, "status")
    assert f"key prefix {PREFIX!r}" in checked and "'ridpool': web" in checked


def test_the_check_shows_the_last_error_whole_with_its_request_id(redis_url: str, r: redis.Redis) -> None:
    """A long last_error (as the daemon keeps it, up to 500 characters) is not cut inside its X-Request-Id."""
    publish_pool(r, PREFIX, "web")
    request_id = "9f1c2d3e4b5a69788796a5b4c3d2e1f0"
    error = "rejected: HTTP 401 from https://api.sd-rtn.com: " + "x" * 150 + f" (X-Request-Id {request_id})"
    r.hset(pool_keys(PREFIX, "web").stats, mapping={"state": "error", "last_error": error})
    line = one_line(ridpool("status", "--check", "--redis-url", redis_url, "--prefix", PREFIX), 13, "status")
    assert f"(X-Request-Id {request_id})" in line


def test_a_config_starting_with_a_byte_order_mark_parses(tmp_path: Path, redis_url: str) -> None:
    """A UTF-8 BOM (some editors write one) is not "Invalid statement": the file is read as if it had none."""
    config = tmp_path / "c.toml"
    text = (
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "http://127.0.0.1:9"\n'
        f'[[pools]]\nname = "lobby"\nappid = "{APPID}"\ncname = "lobby"\nuid = "1"\n'
    )
    config.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert ridpool("check-config", "-c", str(config)).returncode == 0
    line = one_line(ridpool("status", "--check", "-c", str(config)), 13, "status")
    assert "Invalid statement" not in line


def test_pop_prints_source_only_with_or_acquire(redis_url: str, r: redis.Redis) -> None:
    """A plain pop's JSON has no `source` (it can only be the pool)."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    done = ridpool("pop", "web", "--redis-url", redis_url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    assert "source" not in json.loads(done.stdout)


def test_a_failed_pop_or_acquire_is_one_line_with_the_request_id(tmp_path: Path, redis_url: str) -> None:
    """Agora rejecting the credentials: exit 12, one line (no log event besides) with Agora's X-Request-Id."""
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET) as sim:
        config = tmp_path / "c.toml"
        config.write_text(
            f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "{sim.url}"\n'
            f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nuid = "1"\nscene = 1\n'
        )
        publish_pool(redis.Redis.from_url(redis_url), PREFIX, "web")
        env = {"AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": "wrong-secret-0123456789"}
        done = ridpool("pop", "web", "--or-acquire", "-c", str(config), env=env)
    line = one_line(done, cli.EXIT_ACQUIRE, "pop")
    assert "401" in line and re.search(r"X-Request-Id [0-9a-f]{8,}", line), line
    assert done.stdout == ""


def _help(*command: str) -> str:
    done = ridpool(*command, "--help")
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def _named_codes(text: str) -> set[int]:
    """The exit codes a help text names: the numbers after "exit", "exits" or "exit codes", up to the sentence's end."""
    return {
        int(n) for part in re.findall(r"\bexit(?:s| codes:?)? (\d[^.]*)", text) for n in re.findall(r"\b\d+\b", part)
    }


def _readme_codes() -> set[int]:
    paragraph = re.search(r"^Exit codes: (.*?)\n\n", (ROOT / "README.md").read_text(), re.S | re.M)
    assert paragraph, "the README's exit code paragraph"
    return {int(n) for n in re.findall(r"\*\*(\d+)\*\*", paragraph.group(1))}


def test_every_exit_code_a_help_text_names_is_a_real_one_and_documented() -> None:
    """Each command's --help (and the top-level one): every exit code it names is one of the CLI's constants
    and in the README's exit code list; the README lists exactly the CLI's codes; `status --help` names 13 and 5."""
    commands = [[], *([c] for c in cli.build_parser()._subparsers._group_actions[0].choices)]  # type: ignore[union-attr]
    named: dict[str, set[int]] = {" ".join(c) or "ridpool": _named_codes(_help(*c)) for c in commands}
    assert _readme_codes() == CODES
    for command, codes in named.items():
        assert codes <= CODES, (command, codes - CODES)
    assert {cli.EXIT_OK, cli.EXIT_UNHEALTHY, cli.EXIT_REDIS} <= named["status"]


def test_status_check_exits_only_with_the_codes_its_help_names(redis_url: str) -> None:
    """Healthy-less, unreachable, a bad URL: each exit code `status --check` gives is one its --help names."""
    shown = _named_codes(_help("status"))
    outcomes = [
        ridpool("status", "--check", "--redis-url", redis_url, "--prefix", PREFIX),
        ridpool("status", "--check", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"),
        ridpool("status", "--check", "--redis-url", "localhost:6379"),
    ]
    assert [o.returncode for o in outcomes] == [cli.EXIT_UNHEALTHY, cli.EXIT_REDIS, cli.EXIT_INVALID]
    assert {o.returncode for o in outcomes} <= shown
