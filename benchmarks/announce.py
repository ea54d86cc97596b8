"""Channels known at run time, measured (issue 8): announced channels through the CLI, and a burst of starters
using `pop_or_acquire` against today's fallback (starters acquiring themselves, outside the shared budget).

    .venv/bin/python -m benchmarks.announce            # ~3 minutes; rewrites its section of docs/benchmarks.md

Everything runs as deployed: Redis, the simulator (Agora's strict 10/s window, 0.15 s +- 0.1 s latency) and the
daemon (`ridpool run -c FILE`) each in a process of their own; the starters are the CLI (announced channels) or
200 asyncio tasks with a client each (the burst), so they coordinate only through Redis, as separate processes do.
Every ID is checked by starting it at the simulator for its own channel, inside the shared budget (`budget()`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from ridpool import AsyncPoolClient, PoolClient, PoolEmpty
from ridpool.daemon import log
from ridpool.daemon.limiter import window_for
from ridpool.daemon.localredis import LocalRedis

from benchmarks import page
from benchmarks.common import APPID, CUSTOMER_ID, PREFIX, ROOT, SECRET, UID, SimProcess, ridpool_argv, terminate

RATE = 10  # the daemon's agora.rate_limit: the simulator's own window, so any excess is a 429
LATENCY, JITTER = 0.15, 0.1
CHANNELS, AHEAD = 40, 40.0  # announced channels, seconds ahead
STARTERS, POOL_SIZE, SPREAD = 200, 20, 2.0
GIVE_UP = 120.0  # seconds after which a fallback starter stops retrying (counted as not getting an ID)
ENV = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
LOGS = ROOT / "benchmarks" / "out"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- announce:begin -->", "<!-- announce:end -->"
SECTION = page.Section(BEGIN, END)
COMMAND = ".venv/bin/python -m benchmarks.announce"


def config_toml(redis_url: str, sim_url: str) -> str:
    return f"""# written by benchmarks/announce.py
[redis]
url = "{redis_url}"
key_prefix = "{PREFIX}"

[agora]
base_url = "{sim_url}"
rate_limit = {RATE}

[[pools]]
name = "classes"
appid = "{APPID}"
announced = true
uid = "{UID}"
max_age = 270

[[pools]]
name = "web"
appid = "{APPID}"
cname = "web-{{uuid}}"
scene = 1
uid = "{UID}"
size = {POOL_SIZE}
max_age = 270
"""


class Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        self.out = log.open("wb")
        self.proc = subprocess.Popen(
            [*ridpool_argv(), "run", "-c", str(config)], cwd=ROOT, env=ENV, stdout=self.out, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        terminate(self.proc, 15)
        self.out.close()


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_ok(http: httpx.Client, sim_url: str, rid: str, cname: str, uid: str) -> bool:
    """Agora's `start` at the simulator: 200 only for an unused, unexpired ID of exactly this channel and uid."""
    url = f"{sim_url}/v1/apps/{APPID}/cloud_recording/resourceid/{rid}/mode/mix/start"
    body = {"cname": cname, "uid": uid, "clientRequest": {}}
    return http.post(url, json=body, auth=(CUSTOMER_ID, SECRET)).status_code == 200


# -- 40 announced channels through the CLI -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    channels: int
    announce_seconds: float  # announcing all of them through the CLI
    pops_ok: int  # CLI pops at the instant that exited 0
    pop_span: float  # from the instant to the last CLI pop's exit
    started_ok: int  # IDs the simulator started for their own channel
    acquired: int  # IDs the daemon acquired for the announced pool
    rate_limited: int
    first_acquire_before: float  # seconds before the instant the first ID for them was acquired
    oldest_age_at_pop: float  # seconds, the oldest popped ID's age at its pop


def announced(redis_url: str, sim: SimProcess, config: Path) -> AnnounceResult:
    before = sim.stats_sync()
    at = datetime.now(UTC) + timedelta(seconds=AHEAD)
    names = [f"class-{i:04d}" for i in range(CHANNELS)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda n: (
                    subprocess.run(
                        [
                            *ridpool_argv(),
                            "announce",
                            "classes",
                            "--cname",
                            n,
                            "--at",
                            at.isoformat(),
                            "-c",
                            str(config),
                        ],
                        cwd=ROOT,
                        env=ENV,
                        capture_output=True,
                        check=False,
                    ).returncode
                ),
                names,
            )
        )
    announce_seconds = time.monotonic() - t0
    if any(codes):
        raise RuntimeError(f"ridpool announce failed: exit codes {set(codes)}")
    with PoolClient.from_config(config) as client:
        acquired_at: list[float] = []
        while datetime.now(UTC) < at:  # watch when the daemon starts acquiring for them
            if not acquired_at and client.stats("classes").counters["added"] > 0:
                acquired_at.append((at - datetime.now(UTC)).total_seconds())
            time.sleep(0.05)
        t1 = time.monotonic()
        with ThreadPoolExecutor(CHANNELS) as pool:
            done = list(
                pool.map(
                    lambda n: subprocess.run(
                        [*ridpool_argv(), "pop", "classes", "--cname", n, "-c", str(config)],
                        cwd=ROOT,
                        env=ENV,
                        capture_output=True,
                        text=True,
                        check=False,
                    ),
                    names,
                )
            )
        pop_span = time.monotonic() - t1
        entries = [json.loads(d.stdout) for d in done if d.returncode == 0]
        with httpx.Client(timeout=10) as http:
            started = 0
            for e in entries:
                with client.budget():
                    started += start_ok(http, sim.url, e["resourceId"], e["cname"], e["uid"]) and e["cname"] in names
        acquired = client.stats("classes").counters["acquires"]
    after = sim.stats_sync()
    ages = [(e["expiresAt"] - e["expiresIn"] - e["sentAt"]) / 1000 for e in entries]
    return AnnounceResult(
        CHANNELS,
        announce_seconds,
        len(entries),
        pop_span,
        started,
        acquired,
        after.rate_limited - before.rate_limited,
        acquired_at[0] if acquired_at else 0.0,
        max(ages, default=0.0),
    )


# -- 200 starters on a pool of 20 --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BurstResult:
    mode: str
    starters: int
    got: int
    from_pool: int
    last_id: float  # seconds from the burst's start to the last starter holding an ID
    rate_limited: int  # 429s at the simulator during the burst (daemon and starters)
    requests: int
    started_ok: int | None  # IDs the simulator started for their own channel (None: not checked)


async def ridpool_starter(client: AsyncPoolClient, delay: float, t0: float) -> tuple[float, str, object]:
    await asyncio.sleep(delay)
    entry = await client.pop_or_acquire("web")
    return time.monotonic() - t0, entry.source, entry


async def fallback_starter(
    client: AsyncPoolClient, http: httpx.AsyncClient, sim_url: str, delay: float, t0: float
) -> tuple[float, str, object]:
    """Today's fallback: pop, and when the pool is empty acquire yourself, outside the budget, retrying a 429
    (or a refused connection) with a jittered doubling backoff from 1 s to 8 s; giving up after GIVE_UP s."""
    await asyncio.sleep(delay)
    try:
        entry = await client.pop("web")
        return time.monotonic() - t0, "pool", entry
    except PoolEmpty:
        pass
    body = {"cname": f"web-self-{random.getrandbits(64):x}", "uid": UID, "clientRequest": {"scene": 1}}
    for attempt in itertools.count():
        try:
            got = await http.post(
                f"{sim_url}/v1/apps/{APPID}/cloud_recording/acquire", json=body, auth=(CUSTOMER_ID, SECRET)
            )
            if got.status_code == 200:
                return time.monotonic() - t0, "acquired", got.json()
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > GIVE_UP:
            return time.monotonic() - t0, "failed", None
        await asyncio.sleep(min(8.0, 2.0**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def burst(mode: str, config: Path, sim: SimProcess) -> BurstResult:
    rng = random.Random(8)
    delays = sorted(rng.uniform(0, SPREAD) for _ in range(STARTERS))
    with PoolClient.from_config(config) as client:
        wait_until(lambda: client.stats("web").size >= POOL_SIZE, 60, "a full pool of 20")
    time.sleep(1.1)  # the simulator's 1 s window drains
    before = sim.stats_sync()

    async def main() -> list[tuple[float, str, object]]:
        # One starter service handling the 200 recording starts: one client (one budget queue), as deployed.
        async with AsyncPoolClient.from_config(config) as client, httpx.AsyncClient(timeout=10) as http:
            t0 = time.monotonic()
            if mode == "pop_or_acquire":
                tasks = [ridpool_starter(client, d, t0) for d in delays]
            else:
                tasks = [fallback_starter(client, http, sim.url, d, t0) for d in delays]
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    after = sim.stats_sync()
    started: int | None = None
    if mode == "pop_or_acquire":
        with PoolClient.from_config(config) as client, httpx.Client(timeout=10) as http:
            started = 0
            for _, _, e in results:
                with client.budget():
                    started += start_ok(http, sim.url, e.resource_id, e.cname, e.uid)  # type: ignore[attr-defined]
    return BurstResult(
        mode,
        STARTERS,
        sum(s != "failed" for _, s, _ in results),
        sum(s == "pool" for _, s, _ in results),
        max(t for t, s, _ in results if s != "failed"),
        after.rate_limited - before.rate_limited,
        after.requests - before.requests,
        started,
    )


# -- the report ----------------------------------------------------------------------------------------------


def section(a: AnnounceResult, bursts: Sequence[BurstResult], sustained: float) -> str:
    bound = (STARTERS - POOL_SIZE) / sustained
    ours, theirs = bursts
    rows = "\n".join(
        f"| {b.mode} | {b.got}/{b.starters} | {b.from_pool} | **{b.rate_limited}** | {b.requests} | "
        f"{b.last_id:.1f} s | {b.last_id / bound:.2f} | {'-' if b.started_ok is None else b.started_ok} |"
        for b in bursts
    )
    header = (
        "| announced via CLI | pops exit 0 at the instant | all pops done after | started for its own channel "
        "| acquired for them | 429s | first acquire before the instant | oldest ID at its pop |"
    )
    row = (
        f"| {a.channels} in {a.announce_seconds:.1f} s | {a.pops_ok}/{a.channels} | {a.pop_span:.2f} s "
        f"| {a.started_ok}/{a.channels} | {a.acquired} (limit {a.channels * 1.05:.0f}) | {a.rate_limited} "
        f"| {a.first_acquire_before:.1f} s | {a.oldest_age_at_pop:.1f} s |"
    )
    announce_table = "\n".join([header, "|---" * 8 + "|", row])
    return f"""{BEGIN}
## Channels known at run time (announce, pop_or_acquire)

`{COMMAND}` ({datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}; the simulator's strict 10/s window with
{LATENCY} s +- {JITTER} s latency, `agora.rate_limit = {RATE}`, the daemon as `ridpool run`, every ID started
at the simulator for its own channel inside the shared budget).

**{a.channels} channels announced through the CLI for an instant {AHEAD:.0f} s ahead**, each popped through the
CLI at that instant, all at once:

{announce_table}

The daemon starts acquiring for the announcements as late as the budget allows (earliest deadline first, with
{sustained:.2f}/s sustained: {a.channels} IDs need {a.channels / sustained:.1f} s, plus its 2 s lead), so the
IDs are a few seconds old at the instant rather than {AHEAD:.0f} s. Each pop takes no wait (no `--wait`); "all
pops done after" is the start-up of {a.channels} CLI processes at once on this machine's cores.

**{STARTERS} starters within {SPREAD:.0f} s on a pool of {POOL_SIZE}** (the daemon refilling it meanwhile), the
same run; anchor: today's fallback, where a starter that finds the pool empty acquires itself, outside the budget,
retrying a 429 with a jittered doubling backoff from 1 s to 8 s (the simulator, like Agora, counts refused
requests in its window too). The bound is what the budget itself allows: ({STARTERS} - {POOL_SIZE}) /
{sustained:.2f}/s = {bound:.1f} s after the burst.

| mode | got an ID | from the pool | HTTP 429s | requests to Agora | last ID after | / bound | started OK |
|---|---|---|---|---|---|---|---|
{rows}

pop_or_acquire drew {ours.rate_limited} 429s against {theirs.rate_limited} for the fallback, and its last ID came
{ours.last_id:.1f} s after the burst ({ours.last_id / bound:.2f}x the bound; the daemon's own refills of the pool
share the same budget) against {theirs.last_id:.1f} s.
{END}"""


def main() -> int:
    os.environ.update(ENV)  # the in-process starters' pop_or_acquire reads the credentials from the environment
    log.configure(level="warning", json=False)  # the starters' own events: only trouble is worth seeing here
    LOGS.mkdir(parents=True, exist_ok=True)
    server = LocalRedis().start()
    sim = SimProcess(rate_limit=RATE, latency=LATENCY, jitter=JITTER)
    daemon = None
    try:
        with tempfile.TemporaryDirectory(prefix="ridpool-bench-") as tmp:
            config = Path(tmp) / "announce.toml"
            config.write_text(config_toml(server.url, sim.url))
            daemon = Daemon(config, LOGS / "announce-daemon.log")
            with PoolClient.from_config(config) as client:
                wait_until(lambda: {"classes", "web"} <= set(client.pools()), 30, "the daemon to publish its pools")
            print("40 announced channels", flush=True)
            a = announced(server.url, sim, config)
            print(f"  {a}", flush=True)
            bursts = []
            for mode in ("pop_or_acquire", "fallback"):
                print(f"200 starters: {mode}", flush=True)
                bursts.append(burst(mode, config, sim))
                print(f"  {bursts[-1]}", flush=True)
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()
        server.stop()
    SECTION.write(section(a, bursts, window_for(RATE).sustained))
    print(f"wrote {DOC}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
