"""Every recording started: bursts of starters measured end to end, each starter done when it holds a `sid`.

    .venv/bin/python -m benchmarks.starts            # ~8 min on 2 cores; rewrites its section of docs/benchmarks.md
    .venv/bin/python -m benchmarks.starts --full     # also 2,000 classes announced for one instant (~10 min more)
    .venv/bin/python -m benchmarks.starts --quick    # a smoke run at a tenth of the sizes; benchmarks/out/

All classes start at one instant. A starter with `start_slot` waits for its turn at the shared budget, pops, and
calls Agora's `start` at once; the old pattern (the README's before) pops (or acquires on the spot) first and then
waits inside `budget()` for its start. A 429 on `start` takes another turn and tries again; any other failure
(433: the ID expired while the starter waited) is a recording that never started. The simulator, in a process of
its own (Agora's clock is not the starters'), keeps Agora's strict 10/s window over acquire and start together,
answers in 150 ms +- 100 ms, and lets an ID live `validity` seconds (300, or 30 near the bound). The daemons run in
this process (a warm-up instant is brought near with the daemon's `warmup_shift`), with every default but the
rate: `rate_limit = 10`, the simulator's own window, so that any excess is a 429.

Figures per scenario: started, served from the pool, failed starts by Agora's code, 429s (acquires and starts),
IDs issued (acquired), and the time from the instant to started (p50, max) against the bound N / sustained rate:
with starters served in order, the last of N starts waits at least that long for the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, RidpoolError, functions, plans
from ridpool.budget import REFILL_MAX_WAIT, window_for
from ridpool.daemon import log
from ridpool.daemon.config import Config
from ridpool.daemon.limiter import Budget
from ridpool.daemon.localredis import LocalRedis, free_port
from ridpool.entry import Entry
from ridpool.errors import ConfigError
from ridpool.keys import account_keys

from benchmarks import page
from benchmarks.common import (
    APPID,
    CUSTOMER_ID,
    PREFIX,
    REALISTIC,
    ROOT,
    SECRET,
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

RATE = 10  # the daemons' rate_limit and the simulator's window
SUSTAINED = window_for(RATE).sustained
LATENCY, JITTER = 0.15, 0.1
MIN_TTL = 2.0  # what each starter asks of its entry
WARM_CONNECTIONS = 8  # HTTP connections to Agora open before the instant (a start takes ~0.15 s; ~2 run at once)
CLIENTS = 20  # starters share this many clients (each its own Redis connection pool and HTTP client)
LEAD_IN = 32.0  # seconds from the daemons' start to a warm-up instant: the warm-up is planned and acquired in it
ANNOUNCE_AHEAD = 40.0
WINDOW = 26.0  # a warm-up window's duration: shorter than 60 s - LEAD_IN, so the minute before is over at start
ENV = {"AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- starts:begin (benchmarks/starts.py writes this section) -->", "<!-- starts:end -->"
SECTION = page.Section(BEGIN, END)
COMMAND = ".venv/bin/python -m benchmarks.starts"


# -- the simulator, with the validity asked for ---------------------------------------------------------------

_SIMULATOR = """
import os, sys
from ridpool.testing import Faults, Simulator, serve_forever
port, rate, validity, latency, jitter = int(sys.argv[1]), int(sys.argv[2]), *(float(a) for a in sys.argv[3:6])
serve_forever(Simulator(
    customer_id=os.environ["AGORA_CUSTOMER_ID"], customer_secret=os.environ["AGORA_CUSTOMER_SECRET"], port=port,
    rate_limit=rate, faults=Faults(latency=latency, jitter=jitter), validity=validity))
"""


class Agora(SimProcess):
    """The simulator in a process of its own (see common.SimProcess for why), IDs living `validity` seconds."""

    def __init__(self, validity: float) -> None:
        self.port = free_port()
        self.serve(
            [sys.executable, "-c", _SIMULATOR, str(self.port), str(RATE), str(validity), str(LATENCY), str(JITTER)]
        )


# -- one starter ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """What one starter ended with."""

    started: bool
    source: str  # "pool", "acquired", or "" when it got no ID
    code: str  # Agora's code of a failed start, the error's name when no ID came, "" when started
    seconds: float  # from the instant to the start's answer


async def start(http: httpx.AsyncClient, agora: str, entry: Entry) -> tuple[int, str]:
    """Agora's `start` at the simulator: (200, sid), or (status, Agora's code)."""
    url = f"{agora}/v1/apps/{entry.appid}/cloud_recording/resourceid/{entry.resource_id}/mode/mix/start"
    body = {"cname": entry.cname, "uid": entry.uid, "clientRequest": {}}
    answer = await http.post(url, json=body, auth=(CUSTOMER_ID, SECRET))
    data = answer.json()
    if answer.status_code == 200 and isinstance(data.get("sid"), str):
        return 200, data["sid"]
    return answer.status_code, str(data.get("code", answer.status_code))


async def started_after_429s(
    client: AsyncPoolClient, http: httpx.AsyncClient, agora: str, entry: Entry, first: tuple[int, str]
) -> tuple[int, str]:
    """A start refused with 429 tries again after another turn; anything else is its outcome."""
    status, what = first
    while status == 429:
        async with client.budget():
            status, what = await start(http, agora, entry)
    return status, what


Starter = Callable[[AsyncPoolClient, httpx.AsyncClient, str, str, str | None, float], Awaitable[Started]]


async def slot_starter(
    client: AsyncPoolClient, http: httpx.AsyncClient, agora: str, pool: str, cname: str | None, t0: float
) -> Started:
    """start_slot: a turn, the pop, the start at once."""
    try:
        async with client.start_slot(pool, cname=cname, min_ttl=MIN_TTL) as entry:
            first = await start(http, agora, entry)
    except RidpoolError as exc:
        return Started(False, "", type(exc).__name__, time.monotonic() - t0)
    status, what = await started_after_429s(client, http, agora, entry, first)
    return Started(status == 200, entry.source, "" if status == 200 else what, time.monotonic() - t0)


async def old_starter(
    client: AsyncPoolClient, http: httpx.AsyncClient, agora: str, pool: str, cname: str | None, t0: float
) -> Started:
    """The README's pattern before start_slot: pop (or acquire on the spot), then `budget()` around the start."""
    try:
        entry = await client.pop_or_acquire(pool, cname=cname, min_ttl=MIN_TTL)
        async with client.budget():
            first = await start(http, agora, entry)
    except RidpoolError as exc:
        return Started(False, "", type(exc).__name__, time.monotonic() - t0)
    status, what = await started_after_429s(client, http, agora, entry, first)
    return Started(status == 200, entry.source, "" if status == 200 else what, time.monotonic() - t0)


# -- a scenario -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    label: str
    n: int
    kind: str  # "warmup", "announced" or "on demand"
    replicas: int = 1
    pattern: str = "start_slot"  # or "pop, then budget()"
    validity: float = 300.0
    max_age: float = 270.0
    standing: int = 20


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    started: int
    from_pool: int
    failed: dict[str, int]
    rate_limited: int
    issued: int
    p50: float
    max: float

    @property
    def bound(self) -> float:
        return self.scenario.n / SUSTAINED

    @property
    def ratio(self) -> float:
        return self.max / self.bound


def pools_for(s: Scenario) -> list[dict[str, Any]]:
    if s.kind == "warmup":
        warmups = [{"cron": "* * * * *", "size": s.n, "duration": WINDOW}]
        pool = {"name": "web", "appid": APPID, "cname": "web-{uuid}", "uid": UID, "scene": 1}
        return [{**pool, "size": s.standing, "max_age": s.max_age, "warmups": warmups}]
    return [{"name": "classes", "appid": APPID, "announced": True, "uid": UID, "max_age": s.max_age}]


def ahead(n: int) -> float:
    """How far ahead N channels are announced: 40 s, or time enough for the budget to acquire them all."""
    return max(ANNOUNCE_AHEAD, n / SUSTAINED + 20)


def config_for(url: str, agora: str, s: Scenario) -> Config:
    data = daemon_config(url, agora, *pools_for(s), rate_limit=RATE)
    del data["agora"]["max_in_flight"]  # the default, as deployed
    return parse(data)


def largest_feasible(url: str, max_age: float, standing: int) -> int:
    """check-config's largest feasible warm-up for a template pool with this max_age and standing size (from its
    own message, so that the figure is the one operators are told)."""
    s = Scenario("probe", 100_000, "warmup", max_age=max_age, standing=standing)
    try:
        config_for(url, "http://127.0.0.1:1", s)
    except ConfigError as exc:
        found = re.search(r"the largest feasible size is (\d+)", str(exc))
        if found:
            return int(found[1])
    raise RuntimeError("check-config accepted a warm-up of 100,000")


async def until_server_ms(r: redis.Redis, at_ms: int) -> None:
    while (left := at_ms - server_ms(r)) > 0:
        await asyncio.sleep(min(left / 1000, 0.02))


async def scenario(r: redis.Redis, url: str, s: Scenario) -> Outcome:
    clean(r)
    agora = Agora(s.validity)
    try:
        config = config_for(url, agora.url, s)
        timing = REALISTIC
        if s.kind == "warmup":
            instant = server_ms(r) + round(LEAD_IN * 1000)
            timing = dataclasses.replace(REALISTIC, warmup_shift=((60_000 - instant % 60_000) % 60_000) / 1000)
        elif s.kind == "announced":
            instant = server_ms(r) + round(ahead(s.n) * 1000)
        else:
            instant = server_ms(r) + 3000
        clients = [AsyncPoolClient.from_config(config) for _ in range(min(CLIENTS, s.n))]
        starter: Starter = slot_starter if s.pattern == "start_slot" else old_starter
        limits = httpx.Limits(keepalive_expiry=60)
        async with (
            running(config, replicas=s.replicas, timing=timing),
            httpx.AsyncClient(timeout=30, limits=limits) as http,
        ):
            for c in clients:
                await c.warm()
            pool, cnames = (
                ("web", [None] * s.n) if s.kind == "warmup" else ("classes", [f"class-{i}" for i in range(s.n)])
            )
            if s.kind == "announced":
                for cname in cnames:
                    assert cname is not None
                    await clients[0].announce(pool, cname, at=(instant - server_ms(r)) / 1000)
            # A starter service that talks to Agora keeps connections open: a start whose grant waited for a TCP
            # handshake would leave late.
            await until_server_ms(r, instant - 1000)
            await asyncio.gather(*(http.get(f"{agora.url}/_sim/stats") for _ in range(WARM_CONNECTIONS)))
            await until_server_ms(r, instant)
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(starter(clients[i % len(clients)], http, agora.url, pool, c, t0) for i, c in enumerate(cnames))
            )
        for c in clients:
            await c.aclose()
        stats = agora.stats_sync()
    finally:
        agora.stop()
    done = [x.seconds for x in results if x.started]
    return Outcome(
        scenario=s,
        started=len(done),
        from_pool=sum(x.started and x.source == "pool" for x in results),
        failed=dict(collections.Counter(x.code for x in results if not x.started)),
        rate_limited=stats.rate_limited,
        issued=stats.acquired,
        p50=percentile(done, 50) if done else float("nan"),
        max=max(done) if done else float("nan"),
    )


def scenarios(url: str, *, quick: bool, full: bool) -> list[Scenario]:
    scale = 10 if quick else 1
    n = 200 // scale
    near = int(0.92 * largest_feasible(url, 27.0, 5)) // scale
    out = [
        Scenario(f"{n} classes, warm-up (size {n}, standing 20, max_age 270)", n, "warmup"),
        Scenario(f"{n} classes announced {ANNOUNCE_AHEAD:.0f} s ahead", n, "announced"),
        Scenario(f"{n}, nothing pooled: acquired on the spot inside the budget", n, "on demand"),
    ]
    near_bound = Scenario(
        f"near the bound: {near} (92% of the largest feasible warm-up), IDs live 30 s, max_age 27, standing 5",
        near,
        "warmup",
        validity=30.0,
        max_age=27.0,
        standing=5,
    )
    out += [near_bound, dataclasses.replace(near_bound, replicas=3)]
    out.append(dataclasses.replace(near_bound, pattern="pop, then budget()"))
    if full:
        out.append(Scenario(f"2,000 classes announced {ahead(2000):.0f} s ahead for one instant", 2000, "announced"))
    return out


# -- a starter that runs away ----------------------------------------------------------------------------------

HOGS = 50  # tasks asking for turns back to back
HOG_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Hogged:
    seconds: float
    refill_grants: int  # what one replica's refills got meanwhile
    starter_grants: int
    floor: float  # agora.refill_max_wait

    @property
    def refill_rate(self) -> float:
        return self.refill_grants / self.seconds


async def hogging(url: str, seconds: float) -> Hogged:
    """50 tasks taking starter turns back to back (a starter gone wrong) beside the daemon's refills, which want a
    grant all the time: what the refills get is their floor, one grant per `refill_max_wait`."""
    client = redis.asyncio.Redis.from_url(url)
    await functions.acheck_library(client)
    keys = account_keys(PREFIX, "default")
    window = window_for(RATE)
    budget = Budget(client, keys, RATE, refill_max_wait=REFILL_MAX_WAIT)
    grants: dict[str, list[float]] = {"starter": [], "refill": []}
    began = time.monotonic()
    stop = began + seconds

    async def hog() -> None:
        while time.monotonic() < stop:
            await functions.arun(client, plans.take(keys, window))
            grants["starter"].append(time.monotonic())

    async def refill() -> None:
        while time.monotonic() < stop:
            await budget.take()
            grants["refill"].append(time.monotonic())

    await asyncio.gather(*(hog() for _ in range(HOGS)), *(refill() for _ in range(8)))
    await client.aclose()
    # Only what was granted while the hogs asked: the line drains after `stop`, and the refills then get the rest.
    within = {kind: sum(began <= t < stop for t in times) for kind, times in grants.items()}
    return Hogged(seconds, within["refill"], within["starter"], REFILL_MAX_WAIT)


# -- the report --------------------------------------------------------------------------------------------------


def _failed(failed: dict[str, int]) -> str:
    return ", ".join(f"{n} ({code})" for code, n in sorted(failed.items())) or "0"


def render(
    outcomes: Sequence[Outcome], hogged: Hogged | None, *, command: str, seconds: float, load: str, cpu: str
) -> str:
    lines = [
        BEGIN,
        "## Every recording started: bursts end to end",
        "",
        f"`{command}` ({seconds / 60:.0f} min, load average {load} at the start; {cpu}). Written by",
        "`benchmarks/starts.py`: all classes start at one instant; a starter is done when `start` answered it",
        "a `sid`. The simulator keeps Agora's strict 10/s window over acquire and start together (150 ms +-",
        f"100 ms); the bound is N / {SUSTAINED:.2f}/s, the sustained rate of `rate_limit = {RATE}`: with starters",
        "served in order the last of N starts cannot come sooner. A start refused with 429 takes another turn and",
        "tries again; a start that fails otherwise (433: the ID expired while its starter waited) never started.",
        "",
        "| scenario | replicas | pattern | started | from the pool | failed starts | 429s | IDs issued "
        "| to started p50 / max (s) | bound (s) | max / bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        s = o.scenario
        lines.append(
            f"| {s.label} | {s.replicas} | {s.pattern} | {o.started}/{s.n} | {o.from_pool} | {_failed(o.failed)} "
            f"| {o.rate_limited} | {o.issued} | {o.p50:.1f} / {o.max:.1f} | {o.bound:.1f} | {o.ratio:.2f}x |"
        )
    if hogged is not None:
        lines += [
            "",
            f"A starter that runs away: {HOGS} tasks taking starter turns back to back for {hogged.seconds:.0f} s,",
            f"beside refills that want a grant all the time: the starters got {hogged.starter_grants} grants, the",
            f"refills {hogged.refill_grants} ({hogged.refill_rate:.2f}/s: their floor, one grant per",
            f"`agora.refill_max_wait` = {hogged.floor:g} s; before starters came first, issue 14 measured 0.12/s",
            "for 50 such tasks: whenever a refill's poll happened to land first).",
        ]
    lines += ["", END]
    return "\n".join(lines) + "\n"


async def measure(
    url: str, r: redis.Redis, plan: Sequence[Scenario], hog_seconds: float
) -> tuple[list[Outcome], Hogged]:
    clean(r)
    hogged = await hogging(url, hog_seconds)
    print(
        f"  hogging: refills {hogged.refill_grants} in {hogged.seconds:.0f} s ({hogged.refill_rate:.2f}/s), "
        f"starters {hogged.starter_grants}",
        flush=True,
    )
    outcomes = []
    for s in plan:
        began = time.monotonic()
        outcome = await scenario(r, url, s)
        outcomes.append(outcome)
        print(
            f"  {s.label} x{s.replicas} [{s.pattern}]: started {outcome.started}/{s.n}, from pool {outcome.from_pool},"
            f" failed {_failed(outcome.failed)}, 429s {outcome.rate_limited}, issued {outcome.issued}, to started "
            f"p50 {outcome.p50:.1f} s max {outcome.max:.1f} s ({outcome.ratio:.2f}x of {outcome.bound:.1f} s) "
            f"in {time.monotonic() - began:.0f} s",
            flush=True,
        )
    return outcomes, hogged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.starts", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 2,000 classes announced for one instant")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes; writes benchmarks/out/")
    args = parser.parse_args(argv)
    md = ROOT / "benchmarks" / "out" / "starts-quick.md" if args.quick else DOC
    md.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.starts", *(argv if argv is not None else sys.argv[1:])])
    os.environ.update(ENV)  # the starters' acquires on the spot read the credentials from the environment
    log.configure(level="warning", json=False)
    load = load_average()
    began = time.monotonic()
    server = LocalRedis().start()
    try:
        r = redis.Redis.from_url(server.url)
        cpu = machine(r, load).cpu
        plan = scenarios(server.url, quick=args.quick, full=args.full)
        outcomes, hogged = asyncio.run(measure(server.url, r, plan, HOG_SECONDS / 3 if args.quick else HOG_SECONDS))
        r.close()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    section = render(outcomes, hogged, command=command, seconds=time.monotonic() - began, load=load, cpu=cpu)
    SECTION.write(section, md)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
