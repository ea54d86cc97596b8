"""The README's start_slot sequence for other languages (a turn, then the pop), run verbatim from a shell with
redis-cli and from Node with an npm Redis client pinned by tests/node/package-lock.json."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis
from ridpool.entry import Entry
from ridpool.keys import account_keys, pool_keys

from tests.poolkit import fill, publish_pool
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent
NODE = Path(__file__).parent / "node"
README_PREFIX = "ridpool"  # the README's examples use the default prefix and account
ACCT = account_keys(README_PREFIX, "default")


def block(marker: str) -> str:
    """The fenced code block that follows `<!-- start-slot:<marker> -->` in the README."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- start-slot:{marker} -->\n```\w+\n(.*?)\n```", readme, re.DOTALL)
    assert found, f"README has no start-slot:{marker} block"
    return found[1]


@pytest.fixture
def queued(r: redis.Redis) -> Entry:
    """Pool rooms published under the README's prefix, one entry for room-2, and the account's window full (10
    grants just logged): the sequence must wait its turn, about a second."""
    publish_pool(r, README_PREFIX, "rooms", cnames=("room-1", "room-2", "room-3"))
    [entry] = fill(r, README_PREFIX, "rooms", 1, cname="room-2", named=True)
    seconds, micros = r.time()
    r.zadd(ACCT.rate, {f"earlier-{i}": seconds * 1_000_000 + micros - 10 + i for i in range(10)})
    return entry


def served(r: redis.Redis, reply: list[str], entry: Entry) -> None:
    """The reply is the queued entry; the sequence's grant was logged after the window's ten; nobody is left in
    line; the pop is kept for a retry under the ticket."""
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    assert fields["resourceId"] == entry.resource_id and fields["cname"] == "room-2"
    assert not r.exists(ACCT.turns)
    [ticket] = (m.decode() for m in r.zrange(ACCT.rate, 0, -1) if not m.startswith(b"earlier-"))
    assert r.exists(pool_keys(README_PREFIX, "rooms").popped(ticket))


def test_the_shell_sequence_runs_verbatim_with_redis_cli(
    r: redis.Redis, redis_server: RedisServer, queued: Entry
) -> None:
    """The README's shell block (a turn with ridpool_take, then ridpool_pop) pops the entry for room-2."""
    script = block("sh").replace("-p 6379", f"-p {redis_server.port}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    served(r, done.stdout.splitlines(), queued)


def node_project() -> Path:
    """The pinned npm client installed once into a cache directory named by the lockfile (skip if npm cannot)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    lock = (NODE / "package-lock.json").read_bytes()
    home = Path(tempfile.gettempdir()) / "ridpool-node" / hashlib.sha256(lock).hexdigest()[:16]
    if not (home / "node_modules" / "ioredis").is_dir():
        home.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE / name, home / name)
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=home,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci failed (no registry?): {done.stderr.strip()[-300:]}")
    return home


def test_the_node_sequence_runs_verbatim_with_ioredis(r: redis.Redis, redis_server: RedisServer, queued: Entry) -> None:
    """The README's Node block, with ioredis as the lockfile pins it, pops the entry for room-2."""
    home = node_project()
    script = home / "start_slot.mjs"
    script.write_text(block("node").replace("new Redis(6379)", f"new Redis({redis_server.port})"))
    done = subprocess.run(["node", str(script)], cwd=home, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    served(r, json.loads(done.stdout), queued)
