"""Reliability: the brief's invariants under concurrency, Agora faults, Redis failures and killed replicas.

Real redis-server, the real simulator over HTTP on loopback, real daemons (in-process with fast timings, or
`ridpool run` subprocesses where a signal must hit a whole process). Every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, Entry, PoolClient, PoolEmpty, PoolUnavailable
from ridpool.daemon.config import Credentials
from ridpool.daemon.service import Timing
from ridpool.entry import decode
from ridpool.keys import account_keys, pool_keys, replica, replicas
from ridpool.testing import Faults, Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import fill, publish_pool, server_ms
from tests.proxy import Proxy
from tests.servers import RedisServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WEB = pool_keys(PREFIX, "web")
WEB_LABEL = re.compile(r"web-[0-9a-f]{32}")
RIDPOOL = Path(sys.executable).with_name("ridpool")
# Subprocess replicas get a secret of their own, so a leak is attributable to them.
SUB_SECRET = "Kp7-replica-secret-0c4e1aa9-NEVER-LOG"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=11) as s:
        yield s


# -- helpers ---------------------------------------------------------------------------------------------


def invalid(sim: Simulator, entries: list[Entry]) -> list[tuple[Entry, str]]:
    """Entries Agora would not start for their session: unknown, wrong appid/cname/uid, expired, or reused."""
    reasons = [(e, sim.check(e.resource_id, appid=e.appid, cname=e.cname, uid=e.uid)) for e in entries]
    return [(e, reason) for e, reason in reasons if reason is not None]


def assert_once_and_valid(sim: Simulator, entries: list[Entry]) -> None:
    ids = [e.resource_id for e in entries]
    assert len(ids) == len(set(ids)), "an ID was handed out twice"
    assert invalid(sim, entries) == []
    assert all(e.appid == APPID and e.uid == "527841" and WEB_LABEL.fullmatch(e.cname) for e in entries)
    assert sim.stats().reused == 0


def secret_forms(customer_id: str, secret: str) -> list[bytes]:
    """The secret itself and the Basic auth token it travels in."""
    return [secret.encode(), base64.b64encode(f"{customer_id}:{secret}".encode())]


def keyspace_dump(r: redis.Redis) -> bytes:
    """Every key name with its serialized value (SCAN + DUMP): what an operator could read out of Redis."""
    dump = b""
    for key in r.scan_iter(count=1000):
        dump += key + b"\0" + (r.dump(key) or b"") + b"\n"
    return dump


def queued(r: redis.Redis) -> list[Entry]:
    """The web pool's queue, each member decoded (raises CorruptEntry for anything half-written)."""
    return [decode(member) for member in r.zrange(WEB.queue(None), 0, -1)]


def live(r: redis.Redis) -> int:
    return int(r.zcount(WEB.queue(None), f"({server_ms(r)}", "+inf"))


class Consumers:
    """Tasks popping the web pool as fast as they can (or waiting up to `wait` s for each entry), every outcome
    recorded with when it began and ended.

    They run on a thread and event loop of their own, as starters run apart from the daemon: sharing its loop
    would delay the daemon's requests behind thousands of pops and test the scheduler, not ridpool.
    """

    def __init__(self, url: str, n: int, *, wait: float = 0.0) -> None:
        self.url, self.n, self.wait = url, n, wait
        self.entries: list[Entry] = []
        self.outcomes: list[tuple[float, float, str]] = []  # (began, ended, outcome kind)
        self.errors: list[BaseException] = []  # anything but an entry or PoolEmpty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="consumers", daemon=True)

    def start(self) -> Consumers:
        self._thread.start()
        return self

    async def _main(self) -> None:
        async with AsyncPoolClient.from_url(self.url, prefix=PREFIX) as client:
            await asyncio.gather(*(self._run(client) for _ in range(self.n)))

    async def _run(self, client: AsyncPoolClient) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.entries.append(await client.pop("web", wait=self.wait))
                kind = "entry"
            except PoolEmpty:
                kind = "PoolEmpty"
            except Exception as exc:
                self.errors.append(exc)
                kind = type(exc).__name__
            self.outcomes.append((began, time.monotonic(), kind))
            if kind not in ("entry", "PoolEmpty"):
                await asyncio.sleep(0.01)  # an error is not worth spinning on

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 15)
        assert not self._thread.is_alive(), "the consumers did not stop"

    def kinds_between(self, start: float, end: float) -> Counter[str]:
        """Outcomes of pops that began after `start` and ended before `end`."""
        return Counter(kind for began, ended, kind in list(self.outcomes) if began >= start and ended <= end)

    def popped_since(self, moment: float) -> int:
        return sum(1 for began, _, kind in list(self.outcomes) if kind == "entry" and began >= moment)


# -- concurrency -----------------------------------------------------------------------------------------


async def test_three_replicas_and_32_consumers_never_hand_out_an_id_twice_nor_overfill(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """3 replicas refill one pool while 32 tasks pop flat out: every ID once, valid for its session, no overfill."""
    size = 8
    # The 32 consumers are threads sharing the GIL with the three daemons' event loop, which delays a granted send
    # by up to a GIL switch or two: a host as starved as that is what `agora.jitter` is for (README, Limits), and
    # with the default 50 ms the simulator once saw 11 in a second. The ceiling asserted below is unchanged.
    config = make_config(redis_url, sim.url, web_pool(size, max_in_flight=6), rate_limit=10, jitter=0.15)
    samples: list[tuple[int, int]] = []  # (queue, leases) read in one MULTI

    async def sample(probe: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with probe.pipeline(transaction=True) as pipe:
                pipe.zcard(WEB.queue(None)).zcard(WEB.inflight)
                queue, leases = await pipe.execute()
            samples.append((queue, leases))
            await asyncio.sleep(0.005)

    probe = redis.asyncio.Redis.from_url(redis_url)
    stop_sampling = asyncio.Event()
    async with running(config, replicas=3):
        await eventually(lambda: _known(aclient), what="the pool's metadata")
        sampler = asyncio.create_task(sample(probe, stop_sampling))
        # First the replicas race to the top of an unpopped pool, then the consumers drain it flat out.
        await eventually(lambda: samples and samples[-1][0] == size, what="a full pool, sampled")
        consumers = Consumers(redis_url, 32).start()
        await eventually(lambda: len(consumers.entries) >= 40, timeout=20, what="40 IDs popped")
        await consumers.finish()
        stop_sampling.set()
        await sampler
    await probe.aclose()

    assert consumers.errors == []
    assert_once_and_valid(sim, consumers.entries)
    assert (await aclient.stats("web")).counters["pops"] == len(consumers.entries)  # no pop lost a reply
    assert len(samples) > 100 and max(q for q, _ in samples) == size
    over = [(q, leases) for q, leases in samples if q > size + leases or q > size]
    assert over == [], f"the pool overfilled: {over[:5]}"
    assert sim.stats().max_in_window <= 10


async def _known(aclient: AsyncPoolClient) -> bool:
    return (await aclient.stats("web")).known


# -- Agora faults ----------------------------------------------------------------------------------------


async def test_agora_faults_and_429_bursts_slow_the_daemons_but_never_store_garbage(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Under 5xx, timeouts, malformed 200s and 429 bursts both replicas stay up, refill to 80 %, store only
    valid IDs and keep Agora within the configured rate."""
    faults = Faults(p_5xx=0.2, p_timeout=0.05, p_malformed=0.1, timeout_hold=1.0)
    sim.faults = faults
    size, rate = 10, 10
    config = make_config(redis_url, sim.url, web_pool(size, max_in_flight=5), rate_limit=rate, timeout=0.5)
    cooldown = account_keys(PREFIX, "default").cooldown

    def seen(**least: int) -> bool:
        stats = sim.stats()
        return all(getattr(stats, name) >= n for name, n in least.items())

    with capture_logs() as logs:
        async with running(config, replicas=2) as daemons:
            await eventually(lambda: _known(aclient), what="the pool's metadata")
            consumers = Consumers(redis_url, 2, wait=1.0).start()  # keeps demand up while faults are exercised
            await eventually(
                lambda: seen(errors_5xx=1, malformed=1, timeouts=1), timeout=30, what="each fault at least once"
            )
            for _ in range(2):  # two bursts of 429, each held until a replica met it and the account cooled down
                bursts = sim.stats().spurious_429
                sim.faults = replace(faults, p_429=1.0)
                await eventually(
                    lambda b=bursts: sim.stats().spurious_429 > b and r.pttl(cooldown) > 0,
                    timeout=10,
                    what="a 429 and the shared cooldown",
                )
                sim.faults = faults
                popped = len(consumers.entries)
                await eventually(lambda n=popped: len(consumers.entries) > n, timeout=20, what="pops after it")
            await consumers.finish()
            await eventually(lambda: live(r) >= 0.8 * size, timeout=30, what="the pool back to 80 %")
            for d in daemons:  # every replica is still alive and heartbeating
                assert r.exists(replica(PREFIX, d.replica_id))

    stored = queued(r)  # every stored member decodes as an entry
    assert consumers.errors == []
    rest = []
    while True:
        try:
            rest.append(await aclient.pop("web"))
        except PoolEmpty:
            break
    assert {e.resource_id for e in rest} == {e.resource_id for e in stored}
    assert_once_and_valid(sim, consumers.entries + rest)
    events = Counter(e["event"] for e in logs)
    assert events["daemon.job_failed"] == 0
    assert events["agora.rate_limited"] >= 2
    assert sim.stats().max_in_window <= rate  # refused and timed-out requests count in Agora's window too
    assert all(SECRET not in repr(e) for e in logs)


# -- Redis failures --------------------------------------------------------------------------------------


async def test_pops_fail_with_pool_unavailable_while_redis_is_down_and_the_daemon_refills_after_a_restart(
    redis_url: str, redis_server: RedisServer, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Redis killed and restarted empty mid-run: every pop meanwhile raises PoolUnavailable naming the server
    (never PoolEmpty); the same daemons reload their functions, republish and refill."""
    config = make_config(redis_url, sim.url, web_pool(5), rate_limit=10)
    with capture_logs() as logs:
        async with running(config, replicas=2):
            await eventually(lambda: live(r) == 5, what="a full pool")
            consumers = Consumers(redis_url, 8).start()
            await eventually(lambda: len(consumers.entries) >= 8, what="pops before the outage")

            redis_server.stop()
            down = time.monotonic()
            await eventually(
                lambda: consumers.kinds_between(down, time.monotonic())["PoolUnavailable"] >= 16,
                what="pops during the outage",
            )
            await eventually(lambda: any(e["event"] == "redis.unavailable" for e in logs), what="the outage log")
            up = time.monotonic()
            redis_server.start()

            await eventually(lambda: consumers.popped_since(up) >= 8, timeout=20, what="8 IDs after the restart")
            await consumers.finish()
            library = r.function_list(library="ridpool")

    during = consumers.kinds_between(down, up)
    assert set(during) == {"PoolUnavailable"}, during
    outage_errors = [e for e in consumers.errors if isinstance(e, PoolUnavailable)]
    assert all(f"127.0.0.1:{redis_server.port}" in str(e) for e in outage_errors)
    assert library, "the function library was not loaded again"
    events = Counter(e["event"] for e in logs)
    failed = [e for e in logs if e["event"] == "daemon.job_failed"]
    assert events["redis.recovered"] >= 2 and not failed, failed  # both replicas, no job failed
    assert_once_and_valid(sim, consumers.entries)


@pytest.mark.parametrize("fault", ["CLIENT KILL TYPE normal", "FUNCTION FLUSH"])
async def test_dropped_connections_and_a_flushed_library_are_recovered_without_anyone_noticing(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis, fault: str
) -> None:
    """Connections killed or the function library flushed mid-run, three times: consumers never see an error
    and the daemon keeps storing IDs without a restart."""
    config = make_config(redis_url, sim.url, web_pool(5), rate_limit=10)
    with capture_logs() as logs:
        async with running(config):
            await eventually(lambda: live(r) == 5, what="a full pool")
            consumers = Consumers(redis_url, 8).start()
            for _ in range(3):
                before = len(consumers.entries)
                r.execute_command(fault)
                await eventually(lambda b=before: len(consumers.entries) >= b + 3, timeout=15, what="IDs after it")
            await consumers.finish()
            assert r.function_list(library="ridpool")

    assert consumers.errors == []
    assert not [e for e in logs if e["event"] == "daemon.job_failed"]
    assert_once_and_valid(sim, consumers.entries)


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
async def test_a_pop_whose_reply_is_held_past_the_socket_timeout_fails_in_bounded_time_then_works(
    r: redis.Redis, redis_server: RedisServer, flavour: str
) -> None:
    """Replies delayed beyond socket_timeout: the pop raises PoolUnavailable within a bound, pops work once
    traffic flows again, and no late reply is ever read as the answer to a later pop."""
    publish_pool(r, PREFIX, "web")
    stored = {e.resource_id for e in fill(r, PREFIX, "web", 12)}
    timeout = 0.3
    # 4 attempts (the first and 3 retries) of one timeout each, the retries' backoffs (capped at 0.5 s), slack.
    bound = 4 * timeout + 3 * 0.5 + 1.0
    with Proxy(redis_server.port) as proxy:
        async with contextlib.AsyncExitStack() as stack:
            if flavour == "sync":
                client = stack.enter_context(PoolClient.from_url(proxy.url, prefix=PREFIX, socket_timeout=timeout))
                pop: Callable[[], Awaitable[Entry]] = lambda: asyncio.to_thread(client.pop, "web")  # noqa: E731
            else:
                aclient = await stack.enter_async_context(
                    AsyncPoolClient.from_url(proxy.url, prefix=PREFIX, socket_timeout=timeout)
                )
                pop = lambda: aclient.pop("web")  # noqa: E731
            got = [await pop()]
            proxy.delay(2.0)
            began = time.monotonic()
            with pytest.raises(PoolUnavailable, match="Timeout"):
                await pop()
            assert time.monotonic() - began < bound
            proxy.passthrough()
            while True:
                try:
                    got.append(await pop())
                except PoolEmpty:
                    break
    ids = [e.resource_id for e in got]
    assert len(ids) == len(set(ids)) and set(ids) <= stored
    assert len(ids) >= 12 - 4  # at most the timed-out attempts' entries were taken and never answered
    assert int(r.hget(WEB.stats, "pops") or 0) == 12


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
async def test_a_waiting_pop_on_a_client_with_a_short_socket_timeout_ends_in_pool_empty(
    r: redis.Redis, redis_url: str, flavour: str
) -> None:
    """pop(wait=1.5) on a healthy Redis with socket_timeout=0.3 and nothing arriving: PoolEmpty once the wait
    is over, never PoolUnavailable (its blocking slices must fit inside the socket timeout)."""
    publish_pool(r, PREFIX, "web")
    began = time.monotonic()
    with pytest.raises(PoolEmpty):
        if flavour == "sync":
            with PoolClient.from_url(redis_url, prefix=PREFIX, socket_timeout=0.3) as client:
                await asyncio.to_thread(client.pop, "web", wait=1.5)
        else:
            async with AsyncPoolClient.from_url(redis_url, prefix=PREFIX, socket_timeout=0.3) as aclient:
                await aclient.pop("web", wait=1.5)
    assert 1.5 <= time.monotonic() - began < 3.0


def test_a_cut_connection_is_pool_unavailable_at_once_and_pops_resume_when_the_network_does(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """Connections reset by the network: a pop fails fast with PoolUnavailable (not PoolEmpty), then resumes."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 3)
    with Proxy(redis_server.port) as proxy, PoolClient.from_url(proxy.url, prefix=PREFIX, socket_timeout=5) as client:
        first = client.pop("web")
        proxy.cut()
        began = time.monotonic()
        with pytest.raises(PoolUnavailable, match=f"127.0.0.1:{proxy.port}"):
            client.pop("web")
        assert time.monotonic() - began < 2.5
        proxy.passthrough()
        second = client.pop("web")
    assert first.resource_id != second.resource_id


async def test_a_lost_reply_to_a_lease_request_does_not_leave_the_pool_short(
    redis_url: str, redis_server: RedisServer, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Redis stalls past the daemon's socket timeout while answering `ridpool_reserve` (the lease is taken but
    the reply lost, and redis-py retries the call): the pool is full again within seconds, not a lease later."""
    with Proxy(redis_server.port) as proxy:
        config = make_config(proxy.url, sim.url, web_pool(4, max_in_flight=4), rate_limit=10)
        config = config.model_copy(update={"redis": config.redis.model_copy(update={"socket_timeout": 0.3})})
        async with running(config) as [daemon]:
            await eventually(lambda: live(r) == 4, what="a full pool")
            proxy.hold_reply_to(b"ridpool_reserve", 1.0)
            await aclient.pop("web")
            await eventually(lambda: proxy.hold_marker is None, what="a lease request whose reply is held")
            try:
                await eventually(lambda: live(r) == 4, timeout=5, what="a full pool again")
            except AssertionError:
                leases = r.zrange(WEB.inflight, 0, -1)
                raise AssertionError(
                    f"{live(r)}/4 entries after 5 s; leases {leases} hold the rest for {daemon.refiller.lease_ms} ms"
                ) from None


# -- killed replicas (subprocesses) ----------------------------------------------------------------------


@dataclass
class Replica:
    """One `ridpool run` process; its stdout and stderr go to `log`."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def id_prefix(self) -> str:
        return f"{socket.gethostname()}-{self.proc.pid}-"  # see Daemon.__init__: host-pid-random

    def leases(self, r: redis.Redis) -> dict[str, float]:
        return {
            token.decode(): score
            for token, score in r.zrange(WEB.inflight, 0, -1, withscores=True)
            if token.decode().startswith(self.id_prefix)
        }

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]


@pytest.fixture
def spawn_replica(tmp_path: Path) -> Iterator[Callable[[Path], Replica]]:
    """Start `ridpool run -c FILE` processes; any still running at the end is killed (by its own pid)."""
    started: list[Replica] = []

    def start(config: Path) -> Replica:
        log = tmp_path / f"replica-{len(started)}.log"
        env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SUB_SECRET}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(RIDPOOL), "run", "-c", str(config), "--log-format", "json"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(Replica(proc, log))
        return started[-1]

    yield start
    for rep in started:
        if rep.proc.poll() is None:
            rep.proc.kill()
            rep.proc.wait(timeout=10)


@pytest.fixture
def sub_sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SUB_SECRET, seed=5) as s:
        yield s


def write_config(path: Path, redis_url: str, agora_url: str, *, size: int, timeout: float) -> Path:
    path.write_text(
        f"""
[redis]
url = "{redis_url}"
key_prefix = "{PREFIX}"

[agora]
base_url = "{agora_url}"
rate_limit = 10
timeout = {timeout}

[[pools]]
name = "web"
appid = "{APPID}"
cname = "web-{{uuid}}"
uid = "527841"
scene = 1
size = {size}
max_in_flight = {size}
max_age = 270
"""
    )
    return path


def test_a_replica_killed_mid_acquire_leaves_only_bounded_leases_and_the_others_take_over(
    redis_url: str, r: redis.Redis, sub_sim: Simulator, tmp_path: Path, spawn_replica: Callable[[Path], Replica]
) -> None:
    """SIGKILL a replica holding leases: its leases carry deadlines within one lease length, the survivor fills
    what they do not block, and once they lapse it fills the whole pool; nothing half-written, no secret."""
    size, timeout = 6, 5.0
    sub_sim.faults = Faults(latency=1.0)  # acquires stay in flight long enough to be killed mid-way
    config = write_config(tmp_path / "ridpool.toml", redis_url, sub_sim.url, size=size, timeout=timeout)
    a, b = spawn_replica(config), spawn_replica(config)
    wait_for(lambda: a.leases(r) or b.leases(r), timeout=15, what="a replica holding leases")
    victim, survivor = (a, b) if a.leases(r) else (b, a)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=5)
    killed_at = server_ms(r)

    orphans = victim.leases(r)
    lease_ms = Timing().lease * 1000  # what `ridpool run` uses; renewed every heartbeat while the acquire runs
    assert orphans, "a SIGKILLed replica cannot release its leases"
    assert all(killed_at < deadline <= killed_at + lease_ms for deadline in orphans.values())
    # The survivor fills every place the orphaned leases do not hold, within a few of its 1 s ticks.
    wait_for(lambda: live(r) == size - len(victim.leases(r)), timeout=15, what="the survivor's refill")
    # Nobody renews the orphans: they lapse within one lease length and the survivor fills the whole pool.
    wait_for(lambda: live(r) == size, timeout=lease_ms / 1000 + 10, what="the whole pool filled by the survivor")

    assert survivor.proc.poll() is None
    survivor.proc.send_signal(signal.SIGTERM)
    assert survivor.proc.wait(timeout=10) == 0
    entries = queued(r)
    assert len(entries) == size and len({e.resource_id for e in entries}) == size
    assert invalid(sub_sim, entries) == []
    for rep in (victim, survivor):
        assert "Traceback" not in rep.output()
        assert not any(form.decode() in rep.output() for form in secret_forms(CUSTOMER_ID, SUB_SECRET))
    dump = keyspace_dump(r)
    assert not any(form in dump for form in secret_forms(CUSTOMER_ID, SUB_SECRET))


def test_sigterm_stops_a_replica_within_5_s_releasing_its_leases_and_leaving_only_whole_entries(
    redis_url: str, r: redis.Redis, sub_sim: Simulator, tmp_path: Path, spawn_replica: Callable[[Path], Replica]
) -> None:
    """SIGTERM mid-acquire: exit 0 within 5 s, every queued entry decodes, none of its leases is left in
    `inflight`, it is off the replica list, and its log holds no traceback and no secret."""
    size = 4
    sub_sim.faults = Faults(latency=0.1)
    config = write_config(tmp_path / "ridpool.toml", redis_url, sub_sim.url, size=size, timeout=10)
    rep = spawn_replica(config)
    wait_for(lambda: live(r) == size, timeout=15, what="a full pool")
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        popped = [client.pop("web") for _ in range(2)]
    sub_sim.faults = Faults(latency=6.0)  # longer than the 3 s shutdown grace: these acquires get abandoned
    wait_for(lambda: len(rep.leases(r)) == 2, timeout=10, what="two acquires in flight")

    began = time.monotonic()
    rep.proc.send_signal(signal.SIGTERM)
    code = rep.proc.wait(timeout=10)
    took = time.monotonic() - began

    assert code == 0 and took < 5.0, (code, took)
    assert rep.leases(r) == {}
    entries = queued(r)
    assert len(entries) == size - 2
    assert invalid(sub_sim, entries + popped) == []
    assert not [m for m in r.zrange(replicas(PREFIX), 0, -1) if m.decode().startswith(rep.id_prefix)]
    stopped = [e for e in rep.events() if e.get("event") == "daemon.stopped"]
    assert stopped and stopped[0]["abandoned"] == 2
    assert "Traceback" not in rep.output()
    assert not any(form.decode() in rep.output() for form in secret_forms(CUSTOMER_ID, SUB_SECRET))


# -- secrets ---------------------------------------------------------------------------------------------


async def test_a_rejected_secret_appears_in_no_log_redis_value_or_cli_output(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis, tmp_path: Path
) -> None:
    """With Agora rejecting the account, the secret (plain or as Basic auth) is in no log
    event, no Redis key or value, and no output of `status`, `status --json`, `pop` or `check-config`."""
    secret = "Wq9-rejected-secret-5d2e77b0-NEVER-SHOW"
    credentials = Credentials(customer_id=CUSTOMER_ID, customer_secret=secret)  # type: ignore[arg-type]
    config = make_config(redis_url, sim.url, web_pool(3))
    with capture_logs() as logs:
        async with running(config, credentials=credentials):
            await eventually(lambda: _state_error(aclient), what="the pool in error")
    toml = write_config(tmp_path / "c.toml", redis_url, sim.url, size=3, timeout=2)
    env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": secret}
    outputs = []
    for argv in (
        ["status", "--redis-url", redis_url, "--prefix", PREFIX],
        ["status", "--json", "-c", str(toml)],
        ["pop", "web", "--redis-url", redis_url, "--prefix", PREFIX],
        ["check-config", "-c", str(toml)],
    ):
        done = subprocess.run([str(RIDPOOL), *argv], env=env, capture_output=True, timeout=30, check=False)
        assert "Traceback" not in done.stderr.decode()
        outputs.append(done.stdout + done.stderr)
    assert b"Invalid authentication credentials" in outputs[1]  # the status shows the error, not the secret
    forms = secret_forms(CUSTOMER_ID, secret)
    assert logs and not any(form.decode() in repr(logs) for form in forms)
    dump = keyspace_dump(r)
    assert not any(form in dump for form in forms)
    assert not any(form in out for form in forms for out in outputs)


async def _state_error(aclient: AsyncPoolClient) -> bool:
    return (await aclient.stats("web")).state == "error"
