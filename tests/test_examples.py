"""The starters of examples/ (Node, Go) run against a real redis-server and the Agora simulator on loopback: they
pop with the README's wait loop, start the ID at the simulator and report, as the README says other languages do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from ridpool import ages, functions
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET
from tests.poolkit import APPID, add, make_entry, publish_pool
from tests.servers import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
NODE = ROOT / "examples" / "node"
GO = ROOT / "examples" / "go"
# go.mod points the Redis client at Debian's package (there is no module proxy here).
REDIGO = Path("/usr/share/gocode/src/github.com/gomodule/redigo")
UID = "527841"
WEB = pool_keys(PREFIX, "web")
NAMED = "room:1%"  # `:` and `%` are percent-encoded in the queue's key: both examples must do it


@pytest.fixture(scope="module")
def node_starter() -> list[str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Node example is not run")
    if not (NODE / "node_modules" / "redis").is_dir():
        pytest.skip("examples/node/node_modules is missing: `./dev` installs it with `npm ci` where npm exists")
    return ["node", str(NODE / "starter.js")]


@pytest.fixture(scope="module")
def go_starter(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if shutil.which("go") is None or not REDIGO.is_dir():
        pytest.skip("go or Debian's golang-github-gomodule-redigo-dev is missing (`./dev` installs both as root)")
    binary = tmp_path_factory.mktemp("go") / "starter"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=GO,
        env={**os.environ, "GOPROXY": "off"},
        check=True,
        timeout=300,
    )
    return [str(binary)]


@pytest.fixture(params=["node", "go"])
def starter(request: pytest.FixtureRequest) -> list[str]:
    return list(request.getfixturevalue(f"{request.param}_starter"))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=3) as s:
        yield s


def acquired(sim: Simulator, cname: str) -> str:
    """A resourceId the simulator issued for (APPID, cname, UID), so that its `start` can succeed."""
    answer = httpx.post(
        f"{sim.url}/v1/apps/{APPID}/cloud_recording/acquire",
        auth=(CUSTOMER_ID, SECRET),
        json={"cname": cname, "uid": UID, "clientRequest": {}},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["resourceId"])


def stored(r: redis.Redis, pool: str, cname: str, rid: str) -> None:
    """Put one entry with `rid` into the pool (published first), as the daemon would."""
    functions.load_library(r)
    entry = make_entry(r, pool, cname=cname, rid=rid, uid=UID)
    assert add(r, PREFIX, entry, named=pool == "rooms").name == "ADDED"


def published(r: redis.Redis, pool: str) -> tuple[str, list[str]]:
    """Publish a template pool (`web`) or one of the named channel NAMED (`rooms`); the cname and the args."""
    if pool == "web":
        publish_pool(r, PREFIX, "web")
        return "web-4f1c", ["web"]
    publish_pool(r, PREFIX, "rooms", cnames=(NAMED,))
    return NAMED, ["rooms", NAMED]


def run(starter: list[str], args: list[str], redis_url: str, sim: Simulator) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "RIDPOOL_REDIS_URL": redis_url,
        "RIDPOOL_PREFIX": PREFIX,
        "AGORA_BASE_URL": sim.url,
        "AGORA_CUSTOMER_ID": CUSTOMER_ID,
        "AGORA_CUSTOMER_SECRET": SECRET,
    }
    return subprocess.Popen(
        [*starter, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def counters(r: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(key).items()}


def reported(r: redis.Redis, key: str) -> dict[str, int]:
    """A starts hash's counters since it was made (its per-minute fields aside)."""
    return ages.cumulative({k.decode(): v.decode() for k, v in r.hgetall(key).items()})


@pytest.mark.parametrize("pool", ["web", "rooms"])
def test_the_starter_pops_starts_at_agora_and_reports_ok(
    starter: list[str], pool: str, r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """A stored entry is popped (template pool, and a named channel with `:` and `%`), started at the simulator
    with its appid/cname/uid, and reported ok in the pool's starts hash."""
    cname, args = published(r, pool)
    rid = acquired(sim, cname)
    stored(r, pool, cname, rid)
    code, out, err = finished(run(starter, args, redis_url, sim))
    assert code == 0, err
    result = json.loads(out)
    assert (result["resourceId"], result["cname"], result["uid"], result["ok"]) == (rid, cname, UID, True)
    assert result["sid"] and sim.stats().started == 1
    assert reported(r, pool_keys(PREFIX, pool).starts) == {"ok:0-2": 1}
    assert counters(r, pool_keys(PREFIX, pool).stats)["pops"] == 1


def test_the_starter_waits_on_the_ready_list_and_takes_an_entry_added_meanwhile(
    starter: list[str], r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Started on an empty pool, it blocks in BLPOP; an entry added then is popped and started, and the early
    tries of the wait loop count no miss."""
    cname, args = published(r, "web")
    rid = acquired(sim, cname)
    process = run(starter, args, redis_url, sim)
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in r.client_list()), 5, what="the starter to block")
    stored(r, "web", cname, rid)
    code, out, err = finished(process)
    assert code == 0, err
    assert json.loads(out)["resourceId"] == rid and sim.stats().started == 1
    assert counters(r, WEB.stats).get("misses", 0) == 0


def test_an_empty_pool_exits_3_after_the_wait_counting_one_miss(
    starter: list[str], r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Nothing stored: exit 3 once the wait is over, one miss counted (the last try), nothing sent to Agora."""
    _, args = published(r, "web")
    code, _, err = finished(run(starter, args, redis_url, sim))
    assert code == 3, err
    assert "nothing fresh enough" in err
    assert counters(r, WEB.stats)["misses"] == 1 and sim.stats().requests == 0


def test_a_refused_start_is_reported_failed_with_agoras_code(
    starter: list[str], r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """An ID the simulator never issued: start answers 404, the starter reports failed with code 404, exits 1."""
    cname, args = published(r, "web")
    stored(r, "web", cname, "never-issued-" + "x" * 100)
    code, out, err = finished(run(starter, args, redis_url, sim))
    assert code == 1, err
    assert json.loads(out)["ok"] is False
    assert reported(r, WEB.starts) == {"failed:0-2": 1, "code:404": 1}
