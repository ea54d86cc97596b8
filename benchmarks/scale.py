"""The refill engine at scale (issue 13): what a replica costs with everything full and nothing to do, as curves over
sizes; what one acquire costs at Agora's rate; the sizes that used to be outages; pop latency under many pending
announcements; fill throughput at a raised quota; and a replica cut off from Redis.

Every daemon is `ridpool run` in a process of its own with the default configuration (timing included) but what
each scenario names, so its CPU is its own (from /proc) and Redis traffic is counted by Redis (INFO
commandstats, every command of every client but this benchmark's own INFO). Costs are counted in Redis calls and
CPU seconds, which hold still on a busy machine where times do not.

    .venv/bin/python -m benchmarks.scale            # the full run, rewrites its section of docs/benchmarks.md
    .venv/bin/python -m benchmarks.scale --quick    # smaller sizes, a smoke run (benchmarks/out/scale-quick.md)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from ridpool import PoolClient, functions
from ridpool.daemon.config import parse_config
from ridpool.daemon.localredis import LocalRedis
from ridpool.daemon.publish import meta_of
from ridpool.keys import PoolKeys, pool_keys
from ridpool.meta import publish

from benchmarks import page
from benchmarks.common import (
    APPID,
    CUSTOMER_ID,
    PREFIX,
    ROOT,
    SECRET,
    SimProcess,
    load_average,
    make_entry,
    percentile,
    ridpool_argv,
    server_ms,
    terminate,
)
from tests.proxy import Proxy

LIFE_S = 290  # the entries the idle runs fill their pools with live this long: `max_age = 290`
TICK = 0.2
IDLE_RATE = 50  # the quota of the idle curves (see idle())
# An announced pool whose announcements end at their instant (no grace): what the ending scenarios flood.
ENDING_CLASSES = {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "announce_grace": 0}


@dataclass(frozen=True, slots=True)
class Sizes:
    channels: tuple[int, ...]
    pools: tuple[int, ...]
    announcements: tuple[int, ...]
    settle: float  # seconds the daemons run before an idle window (start-up looks at every channel once)
    window: float  # seconds an idle window lasts
    rate_channels: int  # the pool refilling at Agora's rate
    throughput_entries: int  # entries of the raised-quota fill (over half as many channels)
    latency_pending: int
    ending: int


FULL = Sizes((10, 1_000, 10_000), (1, 100, 300), (100, 10_000, 50_000), 15.0, 30.0, 1_000, 10_000, 50_000, 20_000)
QUICK = Sizes((10, 1_000), (1, 30), (100, 2_000), 6.0, 8.0, 200, 1_000, 5_000, 2_000)


# -- daemons in processes of their own ------------------------------------------------------------------------


def toml(config: dict[str, Any]) -> str:
    """A config dict as TOML (tables, arrays of tables, strings, numbers, booleans, lists of those)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []
    for name, table in config.items():
        tables = table if isinstance(table, list) else [table]
        for t in tables:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


class Fleet:
    """`replicas` processes of `ridpool run -c FILE`, their CPU read from /proc."""

    def __init__(self, config: dict[str, Any], replicas: int = 1, *, redis_urls: Sequence[str] = ()) -> None:
        """`redis_urls`: how the first replicas reach Redis instead of the config's URL (through a proxy)."""
        self.dir = Path(tempfile.mkdtemp(prefix="ridpool-scale-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
        for i in range(replicas):
            data = json.loads(json.dumps(config))
            if i < len(redis_urls):
                data["redis"]["url"] = redis_urls[i]
            path = self.dir / f"replica-{i}.toml"
            path.write_text(toml(data))
            log = (self.dir / f"replica-{i}.log").open("wb")
            argv = [*ridpool_argv(), "run", "-c", str(path), "--log-level", "warning"]
            self.processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT))

    def cpu(self) -> list[float]:
        """CPU seconds (user + system) each replica has used so far; a replica that exited fails the run (a
        figure of a dead daemon is no figure)."""
        out = []
        tick = os.sysconf("SC_CLK_TCK")
        for i, p in enumerate(self.processes):
            if p.poll() is not None:
                tail = (self.dir / f"replica-{i}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"replica {i} exited with {p.returncode}: {tail}")
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        return out

    def errors(self) -> list[str]:
        """What the replicas logged at level error (none is expected)."""
        found = []
        for log in sorted(self.dir.glob("*.log")):
            found += [line for line in log.read_text(errors="replace").splitlines() if '"error"' in line]
        return found

    def stop(self) -> None:
        for p in self.processes:
            terminate(p)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def fleet(config: dict[str, Any], replicas: int = 1, **kwargs: Any) -> Iterator[Fleet]:
    f = Fleet(config, replicas, **kwargs)
    try:
        yield f
    finally:
        f.stop()


def calls(r: redis.Redis) -> int:
    """Commands Redis has run so far, every client's (INFO commandstats, reset per run)."""
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def config_of(redis_url: str, sim_url: str, pools: list[dict[str, Any]], *, rate_limit: float = 10) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "key_prefix": PREFIX},
        "agora": {"base_url": sim_url, "rate_limit": rate_limit},
        "pools": pools,
    }


def named(name: str, n: int, size: int, *, max_age: float = LIFE_S, **extra: Any) -> dict[str, Any]:
    cnames = [f"room-{i}" for i in range(n)]
    return {"name": name, "appid": APPID, "cnames": cnames, "uid": "527841", "size": size, "max_age": max_age, **extra}


def template(name: str, size: int, *, max_age: float = LIFE_S, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "appid": APPID,
        "cname": "web-{uuid}",
        "uid": "527841",
        "scene": 1,
        "size": size,
        "max_age": max_age,
        **extra,
    }


def publish_as_daemon(r: redis.Redis, config: dict[str, Any], pool: str) -> None:
    """The pool's meta as the daemon publishes it (same fingerprint and identity: entries stored under it are
    current for the daemon, not dropped as another config's)."""
    loaded = parse_config(config)
    [pool_config] = [p for p in loaded.pools if p.name == pool]
    functions.load_library(r)
    publish(r, pool_keys(PREFIX, pool), meta_of(pool_config), owner="benchmark", live_ms=0)


def fill(
    r: redis.Redis,
    config: dict[str, Any],
    pool: str,
    slots: Sequence[str | None],
    per_slot: int,
    *,
    life_s: float = LIFE_S,
) -> None:
    """Entries added as the daemon adds them (ridpool_add) to the pool published as the daemon publishes it,
    `per_slot` in each queue, living `life_s`."""
    keys = pool_keys(PREFIX, pool)
    publish_as_daemon(r, config, pool)
    now = server_ms(r)
    pipe = r.pipeline(transaction=False)
    pending = 0
    for slot in slots:
        for _ in range(per_slot):
            entry = dataclasses.replace(make_entry(pool, now, cname=slot), expires_at_ms=now + round(life_s * 1000))
            call = functions.add_call(keys, entry, queue_cname=slot)
            pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
            pending += 1
            if pending >= 2_000:
                assert set(pipe.execute()) == {b"ADDED"}
                pipe, pending = r.pipeline(transaction=False), 0
    if pending:
        assert set(pipe.execute()) == {b"ADDED"}


def announce_far(r: redis.Redis, config: dict[str, Any], pool: str, n: int, *, seed: int = 7) -> None:
    """`n` announcements between an hour and seven days ahead (beyond any planning horizon), published as the
    daemon publishes the pool (same fingerprint: no conflict)."""
    publish_as_daemon(r, config, pool)
    rng = random.Random(seed)
    now = server_ms(r)
    announce_many(r, pool_keys(PREFIX, pool), [now + rng.randint(3_600_000, 7 * 86_400_000 - 60_000) for _ in range(n)])


def announce_many(r: redis.Redis, keys: PoolKeys, ats: Sequence[int]) -> None:
    """Channels class-0, class-1, ... announced for the instants `ats` (server ms), pipelined 2,000 at a time."""
    for first in range(0, len(ats), 2_000):
        pipe = r.pipeline(transaction=False)
        for i, at in enumerate(ats[first : first + 2_000], start=first):
            call = functions.announce_call(keys, f"class-{i}", at=at)
            pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
        pipe.execute()


# -- idle curves ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    kind: str  # "named channels", "template pools", "pending announcements"
    size: int
    replicas: int
    calls_per_s: float  # per replica: commands it sent (counted on the wire)
    inner_per_s: float  # per replica: commands Redis ran, those inside functions included
    cpu_s_per_min: float  # per replica
    acquired: int  # during the window (0: it was idle)
    errors: int


def idle(kind: str, size: int, replicas: int, sizes: Sizes) -> Idle:
    server = LocalRedis().start()
    # Every idle curve at one quota: 10,000 channels of one entry living 290 s need 34.5 renewals/s, which
    # check-config refuses at Agora's default 10/s (the daemon would not start). Idle, nothing is acquired.
    sim = SimProcess(rate_limit=IDLE_RATE, latency=0.15, jitter=0.0)
    try:
        r = redis.Redis.from_url(server.url)
        if kind == "named channels":
            pools = [named("rooms", size, 1)]
        elif kind == "template pools":
            pools = [template(f"web{i}", 1) for i in range(size)]
        else:
            pools = [template("web", 1), {"name": "classes", "appid": APPID, "announced": True, "uid": "527841"}]
        config = config_of(server.url, sim.url, pools, rate_limit=IDLE_RATE)
        if kind == "named channels":
            fill(r, config, "rooms", [f"room-{i}" for i in range(size)], 1)
        elif kind == "template pools":
            for i in range(size):
                fill(r, config, f"web{i}", [None], 1)
        else:
            fill(r, config, "web", [None], 1)
        if kind == "pending announcements":
            announce_far(r, config, "classes", size)
        with Proxy(server.port) as proxy, fleet(config, replicas, redis_urls=[proxy.url] * replicas) as f:
            time.sleep(sizes.settle)
            r.config_resetstat()
            c0, w0, cpu0, a0 = calls(r), proxy.commands, f.cpu(), sim.stats_sync().acquired
            time.sleep(sizes.window)
            c1, w1, cpu1, a1 = calls(r), proxy.commands, f.cpu(), sim.stats_sync().acquired
            errors = f.errors()
        cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) / replicas
        return Idle(
            kind,
            size,
            replicas,
            (w1 - w0) / sizes.window / replicas,
            (c1 - c0) / sizes.window / replicas,
            cpu * 60 / sizes.window,
            a1 - a0,
            len(errors),
        )
    finally:
        sim.stop()
        server.stop()


# -- one acquire at Agora's rate -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AtRate:
    channels: int
    acquires: int
    seconds: float
    calls_per_acquire: float  # commands the daemon sent (on the wire)
    inner_per_acquire: float  # commands Redis ran, those inside functions included
    core_share: float  # of one core, over the window


def at_rate(channels: int, per_channel: int, sizes: Sizes) -> AtRate:
    """A pool of 2,000 entries filled from empty at Agora's rate: it refills continuously for minutes (its standing
    size is what the budget can keep, 6.9 acquires/s of 7.6, so check-config accepts it)."""
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10, latency=0.15, jitter=0.05)
    try:
        r = redis.Redis.from_url(server.url)
        config = config_of(server.url, sim.url, [named("rooms", channels, per_channel)], rate_limit=8)
        with Proxy(server.port) as proxy, fleet(config, redis_urls=[proxy.url]) as f:
            time.sleep(sizes.settle)
            r.config_resetstat()
            c0, w0, cpu0, a0 = calls(r), proxy.commands, f.cpu()[0], sim.stats_sync().acquired
            time.sleep(sizes.window)
            c1, w1, cpu1, a1 = calls(r), proxy.commands, f.cpu()[0], sim.stats_sync().acquired
        n = max(1, a1 - a0)
        return AtRate(channels, a1 - a0, sizes.window, (w1 - w0) / n, (c1 - c0) / n, (cpu1 - cpu0) / sizes.window)
    finally:
        sim.stop()
        server.stop()


# -- sizes that used to be outages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    what: str
    result: str
    ok: bool


def ten_thousand_channels(sizes: Sizes) -> Outcome:
    """A named pool of 10,000 channels: published (in chunks), filled from empty, popped."""
    n = sizes.channels[-1]
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10_000, latency=0.0, jitter=0.0)
    try:
        r = redis.Redis.from_url(server.url)
        config = config_of(server.url, sim.url, [named("rooms", n, 1)], rate_limit=2_000)
        keys = pool_keys(PREFIX, "rooms")
        began = time.monotonic()
        with fleet(config) as f, PoolClient.from_url(server.url, prefix=PREFIX) as client:
            wait(lambda: r.hget(keys.meta, "channels") == str(n).encode(), 30)
            published = time.monotonic() - began
            wait(lambda: sim.stats_sync().acquired >= n, 120)
            filled = time.monotonic() - began
            popped = [client.pop("rooms", cname=f"room-{i}").cname for i in (0, n // 2, n - 1)]
            errors = f.errors()
        ok = popped == ["room-0", f"room-{n // 2}", f"room-{n - 1}"] and not errors
        result = f"published in {published:.1f} s, {n:,} entries filled in {filled:.1f} s, pops of 3 channels served"
        return Outcome(f"a named pool of {n:,} channels", result + (f"; errors: {errors[:2]}" if errors else ""), ok)
    finally:
        sim.stop()
        server.stop()


def announcements_served(sizes: Sizes) -> Outcome:
    """50,000 announcements pending, 200 of them 90 s ahead: those 200 are ready at their instant."""
    n, soon = sizes.latency_pending, 200
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10, latency=0.15, jitter=0.05)
    try:
        r = redis.Redis.from_url(server.url)
        classes = {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "max_age": 270}
        config = config_of(server.url, sim.url, [classes])
        announce_far(r, config, "classes", n - soon)
        keys = pool_keys(PREFIX, "classes")
        at = server_ms(r) + 60_000
        for i in range(soon):
            functions.execute(r, functions.announce_call(keys, f"soon-{i}", at=at))
        with fleet(config) as f, PoolClient.from_url(server.url, prefix=PREFIX) as client:
            wait(lambda: server_ms(r) >= at, 90)
            ready = sum(1 for i in range(soon) if r.zcard(keys.queue(f"soon-{i}")) >= 1)
            popped = sum(1 for i in range(soon) if client.pop("classes", cname=f"soon-{i}").cname == f"soon-{i}")
            errors = f.errors()
        result = f"{ready}/{soon} due ready at their instant, {popped} popped, {n - soon:,} more pending"
        return Outcome(f"{n:,} pending announcements", result, ready == soon == popped and not errors)
    finally:
        sim.stop()
        server.stop()


def announcements_ending(sizes: Sizes) -> Outcome:
    """20,000 announcements ending in the same second: afterwards a template pool refills what is popped from it,
    `announce` takes a new one, and Redis forgets the ended ones (no call fails on Lua's unpack limit)."""
    n = sizes.ending
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10, latency=0.15, jitter=0.05)
    try:
        r = redis.Redis.from_url(server.url)
        classes = ENDING_CLASSES
        config = config_of(server.url, sim.url, [template("web", 3), classes])
        keys = pool_keys(PREFIX, "classes")
        with fleet(config) as f, PoolClient.from_url(server.url, prefix=PREFIX) as client:
            wait(lambda: r.zcard(pool_keys(PREFIX, "web").queue(None)) == 3, 60)
            at = server_ms(r) + 10_000
            announce_many(r, keys, [at] * n)
            wait(lambda: server_ms(r) > at + 1000, 30)
            for _ in range(3):
                client.pop("web")
            wait(lambda: r.zcard(pool_keys(PREFIX, "web").queue(None)) == 3, 30)  # refills go on
            ended = time.monotonic()
            late = client.announce("classes", "late-class", at=60)
            forgotten = wait(lambda: r.zcard(keys.announced) == 1, 60) - ended
            errors = f.errors()
        ok = late.until_ms >= late.at_ms and not errors
        result = (
            f"after the end: web refilled its 3 pops, a new announcement taken, the {n:,} ended ones forgotten "
            f"within {max(0.0, forgotten):.1f} s" + (f"; errors: {errors[:2]}" if errors else "")
        )
        return Outcome(f"{n:,} announcements ending together", result, ok)
    finally:
        sim.stop()
        server.stop()


# -- pop latency under load -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    label: str
    pops: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def popper(url: str, seconds: float, rate: float) -> list[float]:
    """Pops of pool `web` at `rate` a second for `seconds`, each timed (ms)."""
    samples: list[float] = []
    with PoolClient.from_url(url, prefix=PREFIX) as client:
        client.pop("web")  # connection and library check out of the way
        began = time.monotonic()
        n = 0
        while time.monotonic() < began + seconds:
            t = time.perf_counter()
            client.pop("web")
            samples.append((time.perf_counter() - t) * 1000)
            n += 1
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
    return samples


def latency(sizes: Sizes, *, pending: int, ending: bool) -> Latency:
    """Pops of a template pool while a daemon serves an announced pool with `pending` announcements, all far
    ahead, or (`ending`) all ending within the measurement."""
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10, latency=0.15, jitter=0.05)
    try:
        r = redis.Redis.from_url(server.url)
        classes = ENDING_CLASSES
        config = config_of(server.url, sim.url, [template("web", 0), classes])
        rate, seconds = 500.0, 20.0
        fill(r, config, "web", [None], int(rate * seconds) + 500)
        if pending and not ending:
            announce_far(r, config, "classes", pending)
        with fleet(config):
            if ending:
                wait(lambda: r.exists(pool_keys(PREFIX, "classes").meta), 15)
                keys = pool_keys(PREFIX, "classes")
                announce_many(r, keys, [server_ms(r) + 8_000] * pending)
            time.sleep(2.0)
            samples = popper(server.url, seconds, rate)
        if ending:
            label = f"{pending:,} announcements ending together during the pops"
        else:
            label = f"{pending:,} announcements pending" if pending else "no announcements (anchor)"
        return Latency(label, len(samples), percentile(samples, 50), percentile(samples, 99), max(samples, default=0.0))
    finally:
        sim.stop()
        server.stop()


# -- throughput at a raised quota -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    entries: int
    channels: int
    seconds: float
    per_second: float
    sustained: float
    rate_limited: int
    lease_after_pop_s: float  # a template pool popped during the fill: until a lease for it is taken
    refill_after_pop_s: float  # ... and until it is full again


def throughput(sizes: Sizes) -> Throughput:
    entries, rate = sizes.throughput_entries, 200
    channels = entries // 2
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=rate, latency=0.15, jitter=0.05)
    try:
        r = redis.Redis.from_url(server.url)
        web = pool_keys(PREFIX, "web")
        config = config_of(server.url, sim.url, [named("rooms", channels, 2), template("web", 2)], rate_limit=rate)
        fill(r, config, "web", [None], 2)
        with fleet(config), PoolClient.from_url(server.url, prefix=PREFIX) as client:
            wait(lambda: sim.stats_sync().acquired >= 1, 30)
            began = time.monotonic()
            wait(lambda: sim.stats_sync().acquired >= entries // 4, 120)
            client.pop("web")
            popped = time.monotonic()
            leased = wait(lambda: r.zcard(web.inflight) > 0 or r.zcard(web.queue(None)) == 2, 30) - popped
            refilled = wait(lambda: r.zcard(web.queue(None)) == 2, 30) - popped
            wait(lambda: sim.stats_sync().acquired >= entries + 1, 300)
            took = time.monotonic() - began
            stats = sim.stats_sync()
        sustained = rate * 1000 / 1050
        return Throughput(entries, channels, took, entries / took, sustained, stats.rate_limited, leased, refilled)
    finally:
        sim.stop()
        server.stop()


# -- a replica cut off ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    size: int
    back_after_s: float  # from the cut until the pool holds its target again
    lowest: int


def cut(sizes: Sizes) -> Cut:
    """Two replicas fill a pool of 30 while a starter pops; one replica's Redis connection is cut for 20 s (a
    TCP proxy), 15 pops are made at the cut: the healthy replica brings the pool back to 30."""
    size = 30
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=10, latency=0.15, jitter=0.05)
    proxy = Proxy(server.port).start()
    try:
        r = redis.Redis.from_url(server.url)
        keys = pool_keys(PREFIX, "web")
        config = config_of(server.url, sim.url, [template("web", size)])
        with fleet(config, 2, redis_urls=[proxy.url]), PoolClient.from_url(server.url, prefix=PREFIX) as client:
            wait(lambda: r.zcard(keys.queue(None)) == size, 60)
            stop = threading.Event()

            def pops() -> None:  # a starter popping 4 a second: both replicas hold leases
                while not stop.wait(0.25):
                    with contextlib.suppress(Exception):
                        client.pop("web")

            thread = threading.Thread(target=pops, daemon=True)
            thread.start()
            time.sleep(5.0)
            proxy.cut()
            at = time.monotonic()
            stop.set()
            thread.join()
            for _ in range(15):
                client.pop("web")
            lowest = size
            while time.monotonic() < at + 30:
                ready = r.zcount(keys.queue(None), f"({server_ms(r)}", "+inf")
                lowest = min(lowest, ready)
                if ready >= size:
                    break
                time.sleep(0.05)
            back = time.monotonic() - at
            time.sleep(max(0.0, at + 20 - time.monotonic()))
            proxy.passthrough()
        return Cut(size, back, lowest)
    finally:
        proxy.stop()
        sim.stop()
        server.stop()


def wait(condition: Any, timeout: float) -> float:
    """Poll until `condition()`; returns the monotonic time it held; RuntimeError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if condition():
                return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.05)


# -- the report ----------------------------------------------------------------------------------------------------

BEGIN, END = "<!-- scale: begin (benchmarks/scale.py writes this section) -->", "<!-- scale: end -->"
SECTION = page.Section(BEGIN, END)


@dataclass
class Results:
    idle: list[Idle] = field(default_factory=list)
    at_rate: list[AtRate] = field(default_factory=list)
    sizes: list[Outcome] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    throughput: Throughput | None = None
    cut: Cut | None = None
    failed: list[str] = field(default_factory=list)  # scenarios that did not finish, and why


def _flat(points: list[Idle]) -> tuple[float, float]:
    calls = [p.calls_per_s for p in points]
    cpu = [p.cpu_s_per_min for p in points]
    return max(calls) / max(1e-9, min(calls)), max(cpu) / max(1e-9, min(cpu))


def render(res: Results, command: str, seconds: float, load: str, quick: bool) -> str:
    lines = [BEGIN, "## The engine at scale", ""]
    if quick:
        lines += ["**Quick run: small sizes, the numbers mean little.**", ""]
    lines += [
        f"Reproduce: `{command}` (took {seconds / 60:.0f} min; load average {load} at start). Every daemon is",
        "`ridpool run` in a process of its own with the default timing and configuration but what each row names;",
        "the simulator runs in its own process. Redis calls are the commands the daemons send, counted on the wire",
        "by a loopback proxy between them and Redis, per replica; beside them, what Redis ran (INFO commandstats:",
        "the commands run inside functions too). CPU is each replica's own (user + system, /proc), averaged.",
        "",
        f"### Idle: everything full, nothing expiring (`max_age = 290`, `rate_limit = {IDLE_RATE}`)",
        "",
        "| what is stored | size | replicas | Redis calls/s per replica | commands Redis ran/s per replica (inside "
        "functions too) | daemon CPU s/min per replica | acquired meanwhile |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in res.idle:
        lines.append(
            f"| {p.kind} | {p.size:,} | {p.replicas} | {p.calls_per_s:.1f} | {p.inner_per_s:.1f} | "
            f"{p.cpu_s_per_min:.2f} | {p.acquired} |"
        )
    lines += ["", "| curve | largest / smallest, calls | largest / smallest, CPU | target |", "|---|---|---|---|"]
    for kind in ("named channels", "pending announcements"):
        for replicas in (1, 3):
            points = [p for p in res.idle if p.kind == kind and p.replicas == replicas]
            if len(points) > 1:
                c, u = _flat(points)
                ok = c <= 2 and u <= 2
                lines.append(
                    f"| {kind}, {replicas} replica(s), {points[0].size:,} to {points[-1].size:,} | {c:.2f}x | "
                    f"{u:.2f}x | <= 2x (flat): {'met' if ok else '**missed**'} |"
                )
    for replicas in (1, 3):
        points = [p for p in res.idle if p.kind == "template pools" and p.replicas == replicas]
        if len(points) > 1:
            per = [p.calls_per_s / p.size for p in points]
            lines.append(
                f"| template pools, {replicas} replica(s): calls/s per pool | {per[0]:.2f} at {points[0].size} to "
                f"{per[-1]:.2f} at {points[-1].size} | | linear in pools allowed |"
            )
    lines += ["", "### One acquire at Agora's rate (`rate_limit = 8`, a pool that refills continuously)", ""]
    lines += [
        "| pool | acquires | Redis calls per acquire | daemon share of a core | target |",
        "|---|---|---|---|---|",
    ]
    for a in res.at_rate:
        ok = a.calls_per_acquire <= 10 and a.core_share <= 0.10
        lines.append(
            f"| {a.channels:,} channels x 2 | {a.acquires} in {a.seconds:.0f} s | {a.calls_per_acquire:.1f} | "
            f"{a.core_share:.1%} | <= 10 and <= 10%: {'met' if ok else '**missed**'} |"
        )
    lines += ["", "### Sizes that used to be outages", "", "| size | result | |", "|---|---|---|"]
    for o in res.sizes:
        lines.append(f"| {o.what} | {o.result} | {'met' if o.ok else '**missed**'} |")
    lines += ["", "### Pop latency of another pool on the same Redis (500 pops/s for 20 s)", ""]
    lines += ["| while | pops | p50 ms | p99 ms | max ms | target |", "|---|---|---|---|---|---|"]
    for lat in res.latency:
        target = "anchor" if "anchor" in lat.label else f"p99 <= 2 ms: {'met' if lat.p99_ms <= 2 else '**missed**'}"
        lines.append(
            f"| {lat.label} | {lat.pops} | {lat.p50_ms:.2f} | {lat.p99_ms:.2f} | {lat.max_ms:.1f} | {target} |"
        )
    t = res.throughput
    if t is not None:
        ok = t.per_second >= 0.9 * t.sustained and t.lease_after_pop_s <= 1.0
        lines += [
            "",
            "### Throughput at a raised quota (`rate_limit = 200`, the simulator at 200/s, 150 ms latency)",
            "",
            "| fill | rate | sustained rate (anchor) | ratio | another pool popped meanwhile | target |",
            "|---|---|---|---|---|---|",
            f"| {t.entries:,} entries over {t.channels:,} channels, 1 replica, in {t.seconds:.1f} s | "
            f"{t.per_second:.1f}/s | {t.sustained:.1f}/s | {t.per_second / t.sustained:.2f}x | leased for after "
            f"{t.lease_after_pop_s:.2f} s, full after {t.refill_after_pop_s:.2f} s | >= 0.9x and leased within 1 s: "
            f"{'met' if ok else '**missed**'}; 429s: {t.rate_limited} |",
        ]
    c = res.cut
    if c is not None:
        lines += [
            "",
            "### A replica cut off from Redis (a TCP proxy, cut for 20 s) while a peer is healthy",
            "",
            "| pool | back at target after the cut | lowest ready | target |",
            "|---|---|---|---|",
            f"| {c.size} entries, 2 replicas, 15 popped at the cut | {c.back_after_s:.1f} s | {c.lowest} | <= 8 s: "
            f"{'met' if c.back_after_s <= 8 else '**missed**'} |",
        ]
    if res.failed:
        lines += ["", "### Scenarios that did not finish (**missed**)", ""]
        lines += [f"- {f}" for f in res.failed]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def run(sizes: Sizes, only: set[str]) -> Results:
    res = Results()
    for name, part in PARTS.items():
        if only and name not in only:
            continue
        try:
            part(sizes, res)
        except Exception as e:  # one scenario that cannot finish is a miss to report, not the end of the run
            res.failed.append(f"{name}: {type(e).__name__}: {e}")
            print(f"FAILED {res.failed[-1]}", flush=True)
    return res


def _idle(sizes: Sizes, res: Results) -> None:
    for kind, points in (
        ("named channels", sizes.channels),
        ("template pools", sizes.pools),
        ("pending announcements", sizes.announcements),
    ):
        for replicas in (1, 3):
            for n in points:
                res.idle.append(idle(kind, n, replicas, sizes))
                print(res.idle[-1], flush=True)


def _at_rate(sizes: Sizes, res: Results) -> None:
    res.at_rate += [at_rate(sizes.rate_channels, 2, sizes), at_rate(10, 200, sizes)]
    print(res.at_rate, flush=True)


def _sizes(sizes: Sizes, res: Results) -> None:
    for scenario in (ten_thousand_channels, announcements_served, announcements_ending):
        res.sizes.append(scenario(sizes))
        print(res.sizes[-1], flush=True)


def _latency(sizes: Sizes, res: Results) -> None:
    res.latency += [
        latency(sizes, pending=0, ending=False),
        latency(sizes, pending=sizes.latency_pending, ending=False),
        latency(sizes, pending=sizes.ending, ending=True),
    ]
    print(res.latency, flush=True)


def _throughput(sizes: Sizes, res: Results) -> None:
    res.throughput = throughput(sizes)
    print(res.throughput, flush=True)


def _cut(sizes: Sizes, res: Results) -> None:
    res.cut = cut(sizes)
    print(res.cut, flush=True)


PARTS = {
    "idle": _idle,
    "rate": _at_rate,
    "sizes": _sizes,
    "latency": _latency,
    "throughput": _throughput,
    "cut": _cut,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes benchmarks/out/scale-quick.md")
    parser.add_argument("--only", action="append", default=[], choices=list(PARTS))
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    md = ROOT / "benchmarks" / "out" / "scale-quick.md" if args.quick or args.only else ROOT / "docs" / "benchmarks.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.scale", *(argv if argv is not None else sys.argv[1:])])
    load = load_average()
    began = time.monotonic()
    res = run(sizes, set(args.only))
    SECTION.write(render(res, command, time.monotonic() - began, load, args.quick), md)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
