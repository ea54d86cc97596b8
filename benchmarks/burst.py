"""Bursts: refill at the full budget, a warm-up against the standing size alone, the physical limit, waste.

    .venv/bin/python -m benchmarks.burst          # ~9 min on 2 cores; rewrites "## Bursts" in docs/benchmarks.md
    .venv/bin/python -m benchmarks.burst --quick  # a smoke run; writes benchmarks/out/bursts-quick.md

Each figure stands beside its anchor from the same run: Agora's ceiling for the refill rate, the same burst
served by the standing size alone (misses acquire on demand through the shared budget, as a careful starter
would), the physical bound (sustained rate) x (max_age - lead) for the largest warm-up, and the standing-size-200
configuration for waste. The simulator runs in a process of its own (see common.SimProcess) with Agora's strict
10/s window and 150 ms latency; the daemons run in this process with the realistic timing.

Time is shortened where the physics allows: the physical limit and the waste trace use max_age = 30 s instead of
270 s (bound and costs scale with max_age; the waste trace is the 30-minute trace with every duration divided
by 9, so each ratio of durations, and therefore each waste ratio, stays the same). A warm-up instant is brought
near with the daemon's `warmup_shift` (the schedule's clock runs ahead of the server's), nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, PoolEmpty
from ridpool.daemon import log, planner
from ridpool.daemon.agora import AcquireClient
from ridpool.daemon.config import Config
from ridpool.daemon.limiter import Turns, window_for
from ridpool.daemon.localredis import LocalRedis
from ridpool.entry import Entry
from ridpool.keys import account_keys

from benchmarks import page
from benchmarks.common import (
    APPID,
    CREDENTIALS,
    PREFIX,
    REALISTIC,
    ROOT,
    UID,
    SimProcess,
    clean,
    daemon_config,
    load_average,
    machine,
    parse,
    percentile,
    running,
    server_ms,
)

CEILING = 10
SUSTAINED = window_for(CEILING).sustained
LATENCY, JITTER = 0.15, 0.05
BURST_SPREAD = 2.0  # seconds over which a burst's starters arrive


@dataclass(frozen=True, slots=True)
class Shape:
    refill_window: float
    burst: int
    standing: int
    lead_in: float  # seconds from the daemons' start to the instant
    short_age: float  # max_age of the physical-limit and waste runs
    trace: float  # seconds of the waste trace
    background_every: float  # seconds between background starts in the trace


FULL = Shape(
    refill_window=10.0, burst=200, standing=20, lead_in=32.0, short_age=30.0, trace=130.0, background_every=2.0
)
QUICK = Shape(refill_window=4.0, burst=60, standing=10, lead_in=12.0, short_age=15.0, trace=45.0, background_every=2.0)


def web(size: int, *, max_age: float = 270.0, warmups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A template pool with the default max_in_flight (derived from the budget and latency)."""
    pool: dict[str, Any] = {
        "name": "web",
        "appid": APPID,
        "cname": "web-{uuid}",
        "uid": UID,
        "scene": 1,
        "size": size,
        "max_age": max_age,
    }
    if warmups:
        pool["warmups"] = warmups
    return pool


def configured(url: str, sim_url: str, pool: dict[str, Any]) -> Config:
    """The daemon's config with every default left alone (agora.max_in_flight too) but the rate of 10/s."""
    data = daemon_config(url, sim_url, pool, rate_limit=CEILING)
    del data["agora"]["max_in_flight"]
    return parse(data)


def every_minute(size: int, duration: float) -> list[dict[str, Any]]:
    return [{"cron": "* * * * *", "size": size, "duration": duration}]


def shift_for(r: redis.Redis, seconds_ahead: float) -> tuple[float, int]:
    """The warmup_shift that puts the next minute's instant `seconds_ahead` from now, and that instant (ms)."""
    instant = server_ms(r) + round(seconds_ahead * 1000)
    return ((60_000 - instant % 60_000) % 60_000) / 1000, instant


async def until_server_ms(r: redis.Redis, at_ms: int) -> None:
    while (left := at_ms - server_ms(r)) > 0:
        await asyncio.sleep(min(left / 1000, 0.05))


# -- refill rate ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefillRate:
    latency: float
    per_second: float
    rate_limited: int

    @property
    def ratio(self) -> float:
        return self.per_second / SUSTAINED


async def refill_rate(r: redis.Redis, url: str, shape: Shape, latency: float) -> RefillRate:
    """One pool of 400 from empty, default max_in_flight: the slope of the simulator's count over a window."""
    clean(r)
    sim = SimProcess(rate_limit=CEILING, latency=latency, jitter=JITTER)
    try:
        config = configured(url, sim.url, web(400))
        series: list[tuple[float, int]] = []
        async with httpx.AsyncClient() as http, running(config):
            await asyncio.sleep(2.0)
            t0 = time.monotonic()
            while (now := time.monotonic()) < t0 + shape.refill_window:
                series.append((now - t0, (await sim.stats(http)).acquired))
                await asyncio.sleep(0.02)
        slope = float(numpy.polyfit([t for t, _ in series], [n for _, n in series], 1)[0])
        return RefillRate(latency, slope, sim.stats_sync().rate_limited)
    finally:
        sim.stop()


# -- a burst: warm-up against the standing size alone ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Burst:
    label: str
    replicas: int
    starters: int
    hits: int  # served from the pool with wait=0
    p50_ms: float  # time to an ID: the pop, or the pop then an acquire on demand
    p99_ms: float
    pop_p99_ms: float  # the pops alone
    issued: int  # IDs the simulator issued over the whole run
    allowed: int  # burst + standing + 5%
    started_ok: int  # IDs that then started at the simulator (each once)
    rate_limited: int
    reused: int


async def _starter(
    aclient: AsyncPoolClient, delay: float, on_demand: AcquireClient | None, turns: Turns | None
) -> tuple[bool, float, float, tuple[str, str, str] | None]:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    try:
        entry: Entry = await aclient.pop("web")
        popped = time.perf_counter() - t0
        return True, popped, popped, (entry.resource_id, entry.cname, entry.uid)
    except PoolEmpty:
        popped = time.perf_counter() - t0
        if on_demand is None or turns is None:
            return False, popped, popped, None
        cname = f"web-{uuid.uuid4().hex}"

        async def turn() -> None:
            await turns.take()  # a starter's turn: ahead of the daemon's refills

        got = await on_demand.acquire(
            APPID, cname, UID, {"scene": 1}, before_attempt=turn, on_rate_limited=_rate_limited(turns)
        )
        return False, time.perf_counter() - t0, popped, (got.resource_id, cname, UID)


def _rate_limited(turns: Turns) -> Any:
    async def slow_down(_exc: object) -> None:
        await turns.rate_limited()

    return slow_down


async def _start_all(sim: SimProcess, ids: list[tuple[str, str, str]]) -> int:
    """Start every ID at the simulator once, paced below its 10/s window; how many it accepted."""
    ok = 0
    async with httpx.AsyncClient(auth=httpx.BasicAuth(*CREDENTIALS.basic_auth())) as http:
        for rid, cname, uid in ids:
            url = f"{sim.url}/v1/apps/{APPID}/cloud_recording/resourceid/{rid}/mode/web/start"
            body = {"cname": cname, "uid": uid, "clientRequest": {}}
            response = await http.post(url, json=body)
            ok += response.status_code == 200
            await asyncio.sleep(0.12)
    return ok


@contextlib.asynccontextmanager
async def _clients(url: str) -> AsyncIterator[AsyncPoolClient]:
    aclient = AsyncPoolClient.from_url(url, prefix=PREFIX)
    try:
        yield aclient
    finally:
        await aclient.aclose()


async def burst(r: redis.Redis, url: str, shape: Shape, *, warmup: bool, replicas: int = 1) -> Burst:
    """`burst` starters within 2 s at an instant; the pool holds the standing size, plus a warm-up or not."""
    clean(r)
    sim = SimProcess(rate_limit=CEILING, latency=LATENCY, jitter=JITTER)
    try:
        shift, instant = shift_for(r, shape.lead_in)
        # A window shorter than the time to the instant: the previous minute's window is over when the daemons
        # start (a daemon started inside a running window rightly acquires for what is left of it).
        warmups = every_minute(shape.burst, 20) if warmup else None
        config = configured(url, sim.url, web(shape.standing, warmups=warmups))
        timing = dataclasses.replace(REALISTIC, warmup_shift=shift)
        rng = random.Random(7)
        async with (
            _clients(url) as aclient,
            httpx.AsyncClient(timeout=10) as http,
            running(config, replicas=replicas, timing=timing),
        ):
            on_demand = AcquireClient(http, [sim.url], CREDENTIALS)
            turns = Turns(redis.asyncio.Redis.from_url(url), account_keys(PREFIX, "default"), CEILING)
            await until_server_ms(r, instant)
            results = await asyncio.gather(
                *(_starter(aclient, rng.uniform(0, BURST_SPREAD), on_demand, turns) for _ in range(shape.burst))
            )
            await asyncio.sleep(2.0)
            await turns.redis.aclose()
        issued = sim.stats_sync().acquired
        ids = [got for _, _, _, got in results if got is not None]
        started = await _start_all(sim, ids)
        stats = sim.stats_sync()
        total = [t * 1000 for _, t, _, _ in results]
        pops = [p * 1000 for _, _, p, _ in results]
        return Burst(
            label="warm-up" if warmup else "standing size only",
            replicas=replicas,
            starters=shape.burst,
            hits=sum(hit for hit, _, _, _ in results),
            p50_ms=percentile(total, 50),
            p99_ms=percentile(total, 99),
            pop_p99_ms=percentile(pops, 99),
            issued=issued,
            allowed=int((shape.burst + shape.standing) * 1.05),
            started_ok=started,
            rate_limited=stats.rate_limited,
            reused=stats.reused,
        )
    finally:
        sim.stop()


# -- the physical limit --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    max_age: float
    bound: float  # sustained x (max_age - lead)
    size: int  # the largest warm-up check-config accepts
    served: int  # of its pops at the instant, those the pool answered with wait=0
    pop_p99_ms: float
    rate_limited: int

    @property
    def ratio(self) -> float:
        return self.size / self.bound if self.served == self.size else 0.0


async def limit(r: redis.Redis, url: str, shape: Shape) -> Limit:
    """The largest warm-up check-config accepts with max_age short, popped in full at its instant."""
    clean(r)
    sim = SimProcess(rate_limit=CEILING, latency=LATENCY, jitter=JITTER)
    try:
        age_ms = round(shape.short_age * 1000)
        size = planner.largest_feasible(planner.available_rate(SUSTAINED, [], {"web": age_ms}), age_ms)
        lead_s = (planner.LEAD_MS + planner.MARGIN_MS) / 1000
        bound = SUSTAINED * (shape.short_age - lead_s)
        shift, instant = shift_for(r, shape.short_age + 5)
        pool = web(0, max_age=shape.short_age, warmups=every_minute(size, 10))
        config = configured(url, sim.url, pool)
        rng = random.Random(11)
        timing = dataclasses.replace(REALISTIC, warmup_shift=shift)
        async with _clients(url) as aclient, running(config, timing=timing):
            await until_server_ms(r, instant)
            results = await asyncio.gather(
                *(_starter(aclient, rng.uniform(0, BURST_SPREAD), None, None) for _ in range(size))
            )
        return Limit(
            max_age=shape.short_age,
            bound=bound,
            size=size,
            served=sum(hit for hit, _, _, _ in results),
            pop_p99_ms=percentile([p * 1000 for _, _, p, _ in results], 99),
            rate_limited=sim.stats_sync().rate_limited,
        )
    finally:
        sim.stop()


# -- waste over a trace --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waste:
    label: str
    acquired: int
    starts: int
    served: int  # starts the pool answered with wait=0
    rate_limited: int

    @property
    def wasted(self) -> int:
        """Acquired and never popped: expired unused, or still queued at the end (they will expire unused)."""
        return self.acquired - self.served

    @property
    def ratio(self) -> float:
        return self.wasted / self.acquired if self.acquired else 0.0


async def waste(r: redis.Redis, url: str, shape: Shape, *, warmup: bool) -> Waste:
    """Two bursts (at the first two instants) and background starts over the scaled 30-minute trace."""
    clean(r)
    sim = SimProcess(rate_limit=CEILING, latency=LATENCY, jitter=JITTER)
    try:
        first_at = shape.short_age + 8
        shift, first = shift_for(r, first_at)
        if warmup:
            # Windows of 180 s scaled by 1/9, so that the previous minute's window is over when the trace begins.
            pool = web(5, max_age=shape.short_age, warmups=every_minute(shape.burst, shape.short_age * 180 / 270))
        else:
            pool = web(shape.burst, max_age=shape.short_age)
        config = configured(url, sim.url, pool)
        timing = dataclasses.replace(REALISTIC, warmup_shift=shift)
        rng = random.Random(5)
        bursts = [first, first + 60_000]
        async with _clients(url) as aclient, running(config, timing=timing):
            start = server_ms(r)
            tasks = []
            for at in bursts:
                delay = (at - start) / 1000
                tasks += [
                    _starter(aclient, delay + rng.uniform(0, BURST_SPREAD), None, None) for _ in range(shape.burst)
                ]
            background = numpy.arange(shape.background_every, shape.trace, shape.background_every)
            tasks += [_starter(aclient, float(t), None, None) for t in background]
            results = await asyncio.gather(*tasks)
            await until_server_ms(r, start + round(shape.trace * 1000))
        stats = sim.stats_sync()
        return Waste(
            label=f"standing {pool['size']}" + (f" + warm-ups of {shape.burst}" if warmup else ""),
            acquired=stats.acquired,
            starts=len(results),
            served=sum(hit for hit, _, _, _ in results),
            rate_limited=stats.rate_limited,
        )
    finally:
        sim.stop()


# -- the report ----------------------------------------------------------------------------------------------

BEGIN, END = "<!-- bursts: begin (benchmarks/burst.py writes this section) -->", "<!-- bursts: end -->"
SECTION = page.Section(BEGIN, END)


def render(
    command: str,
    seconds: float,
    load: str,
    cpu: str,
    refills: list[RefillRate],
    bursts: list[Burst],
    bound: Limit,
    wastes: list[Waste],
    quick: bool,
) -> str:
    lines = [BEGIN, "## Bursts", ""]
    if quick:
        lines += ["**Quick run: small sizes, the numbers mean little.**", ""]
    lines += [
        f"Reproduce: `{command}` (took {seconds:.0f} s; {cpu}, load average {load} at start). The machine is shared",
        "with other work (2 cores, other processes running): latencies and rates carry that noise. Every daemon runs",
        "the default configuration but `rate_limit = 10`: `max_in_flight` derived from the budget and the observed",
        "latency, `agora.max_in_flight` 32 per replica; the simulator keeps",
        f"Agora's strict 10/s window with {LATENCY * 1000:.0f} ms latency (+-{JITTER * 1000:.0f} ms) in a process of",
        f"its own. Sustained rate of `rate_limit = 10`: {SUSTAINED:.2f}/s.",
        "",
        "| figure | measured | anchor (same run) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for f in refills:
        met = "met" if f.per_second >= 0.9 * SUSTAINED else "**missed**"
        lines.append(
            f"| refill from empty, latency {f.latency * 1000:.0f} ms | {f.per_second:.2f} IDs/s | sustained "
            f"{SUSTAINED:.2f}/s (ceiling 10/s; before this change 5.0/s) | {f.ratio:.2f}x | "
            f">= 0.9x ({0.9 * SUSTAINED:.1f}/s): {met}; 429s: {f.rate_limited} |"
        )
    anchor = next(b for b in bursts if b.label == "standing size only")
    for b in bursts:
        if b is anchor:
            continue
        ok = b.hits == b.starters and b.pop_p99_ms < 50 and b.issued <= b.allowed
        ok = ok and b.started_ok == b.starters
        lines.append(
            f"| burst of {b.starters} in 2 s at a warm-up, {b.replicas} replica(s) | {b.hits}/{b.starters} from the "
            f"pool, pop p99 {b.pop_p99_ms:.1f} ms, issued {b.issued} (allowed {b.allowed}), {b.started_ok} started | "
            f"standing size only: {anchor.hits}/{anchor.starters} from the pool, "
            f"p99 to an ID {anchor.p99_ms / 1000:.1f} s | {b.hits / max(1, anchor.hits):.1f}x hits | "
            f"all hit, p99 < 50 ms, issued <= allowed, all start: {'met' if ok else '**missed**'}; "
            f"429s: {b.rate_limited}, reused: {b.reused} |"
        )
    lines.append(
        f"| largest warm-up served fully (max_age {bound.max_age:.0f} s) | {bound.served}/{bound.size} served, pop p99 "
        f"{bound.pop_p99_ms:.1f} ms | bound {SUSTAINED:.2f}/s x ({bound.max_age:.0f} - 3) s = {bound.bound:.0f} | "
        f"{bound.ratio:.2f}x | >= 0.9x: {'met' if bound.ratio >= 0.9 else '**missed**'}; 429s: {bound.rate_limited} |"
    )
    at_270 = planner.largest_feasible(SUSTAINED * planner.HEADROOM, 270_000)
    with_w = next(w for w in wastes if "warm-up" in w.label)
    without = next(w for w in wastes if w is not with_w)
    lines.append(
        f"| waste over the trace, {with_w.label} | {with_w.wasted}/{with_w.acquired} acquired unused "
        f"({with_w.ratio:.1%}), {with_w.served}/{with_w.starts} starts served | {without.label}: "
        f"{without.wasted}/{without.acquired} ({without.ratio:.1%}), {without.served}/{without.starts} served | "
        f"{with_w.ratio / without.ratio if without.ratio else 0:.2f}x | "
        f"<= 5%: {'met' if with_w.ratio <= 0.05 else '**missed**'}; "
        f"429s: {with_w.rate_limited} / {without.rate_limited} |"
    )
    lines += [
        "",
        "- **Refill.** One pool of 400 filled from empty; the rate is the least-squares slope of the simulator's",
        "  count of issued IDs over the window, after 2 s of start-up. The refill loop starts a round whenever an",
        "  acquire ends, and the in-flight cap follows the latency, so the budget sets the rate at any latency.",
        f"- **Burst.** {anchor.starters} starters arrive at random within 2 s of the instant and pop with `wait = 0`;",
        "  a miss acquires on demand through the same shared budget (what a careful starter does). The pool holds",
        f"  the standing size {FULL.standing if not quick else QUICK.standing} plus, with the warm-up",
        '  (`cron = "* * * * *"`, the instant brought near with `warmup_shift`), the burst\'s size. Afterwards every',
        "  ID obtained is started at the simulator once (paced under its 10/s), which proves each was fresh, right",
        "  for its channel and never handed out twice. Anchor: p50 to an ID "
        f"{anchor.p50_ms:.0f} ms, p99 {anchor.p99_ms:.0f} ms; {anchor.started_ok} started; issued {anchor.issued}.",
        f"- **Physical limit.** max_age {bound.max_age:.0f} s instead of 270 s keeps the run short; the largest size",
        "  `check-config` accepts is (sustained x 0.95 headroom) x (max_age - 2 s lead - 1 s margin), so the ratio",
        f"  to the bound is 0.95 at any max_age: at 270 s the same arithmetic gives {at_270}",
        f"  against a bound of {SUSTAINED * 267:.0f}.",
        "- **Waste.** The 30-minute trace (two bursts nine minutes apart, a background start every 18 s, warm-up",
        "  windows of 180 s, max_age 270 s) with every duration divided by 9: max_age 30 s, a background start every",
        "  2 s, windows of 20 s, bursts 60 s apart, 130 s in all. Entries still queued at the end count as",
        "  waste. The standing-size configuration keeps the burst's size ready all the time and renews it every",
        "  max_age; the warm-up configuration keeps 5 and acquires each burst just before it.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


async def run(url: str, r: redis.Redis, shape: Shape) -> tuple[list[RefillRate], list[Burst], Limit, list[Waste]]:
    refills = [await refill_rate(r, url, shape, latency) for latency in (LATENCY, 0.5)]
    print("refill", refills, flush=True)
    bursts = [
        await burst(r, url, shape, warmup=False),
        await burst(r, url, shape, warmup=True),
        await burst(r, url, shape, warmup=True, replicas=3),
    ]
    print("bursts", bursts, flush=True)
    bound = await limit(r, url, shape)
    print("limit", bound, flush=True)
    wastes = [await waste(r, url, shape, warmup=True), await waste(r, url, shape, warmup=False)]
    print("waste", wastes, flush=True)
    return refills, bursts, bound, wastes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.burst", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes benchmarks/out/bursts-quick.md")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    md = ROOT / "benchmarks" / "out" / "bursts-quick.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.burst", *(argv if argv is not None else sys.argv[1:])])
    log.configure(level="warning", json=False)
    load = load_average()
    began = time.monotonic()
    server = LocalRedis().start()
    try:
        r = redis.Redis.from_url(server.url)
        cpu = machine(r, load).cpu
        refills, bursts, bound, wastes = asyncio.run(run(server.url, r, shape))
        r.close()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    SECTION.write(render(command, time.monotonic() - began, load, cpu, refills, bursts, bound, wastes, args.quick), md)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
