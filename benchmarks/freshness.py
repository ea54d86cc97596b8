"""Freshness from evidence: a trace of auto_max_age against a fixed max_age when Agora fails starts of old IDs.

    .venv/bin/python -m benchmarks.freshness          # ~12.5 min on 2 cores; rewrites its docs/benchmarks.md section
    .venv/bin/python -m benchmarks.freshness --quick  # a 3-minute smoke run; benchmarks/out/freshness-quick.md

Two arms run side by side on one Redis under two key prefixes, each with a simulator of its own (in its own
process: Agora's rate window is per arm) that fails 30% of the starts of IDs older than 60 s since their acquire
(`--start-fail-after 60 --p-start-fail 0.3`, code 433, the same IDs again when retried). Each arm is one daemon
(every default, the per-minute freshness job included; rate_limit 8, leaving the starters 2/s of the simulator's
10/s) and a template pool of `size` 120 with `max_age = 270`: `auto_max_age = true` (`min_max_age = 20`) in one arm,
`false` in the other. Starters pop one entry a second (oldest first: at the standing size the IDs popped are about
120 s old), start it 0-2 s after the pop (a starter's own work between the two; drawn from a seeded generator, the
same in both arms), and report every start (`report()`). Real time throughout: the daemon, the simulator and the
reports share no clock that could be accelerated consistently.

Figures per arm: the effective max_age over time (read from the pool's meta hash every 5 s), starts and their
failure rate over the whole run and over its last 5 minutes, misses, and the waste (IDs acquired that expired
unused, per ID acquired).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field

import httpx
import redis.asyncio
from ridpool import AsyncPoolClient, PoolEmpty, RidpoolError
from ridpool.daemon import log
from ridpool.daemon.config import parse_config
from ridpool.daemon.localredis import LocalRedis

from benchmarks import page
from benchmarks.common import APPID, CREDENTIALS, CUSTOMER_ID, REALISTIC, ROOT, SECRET, UID, SimProcess
from tests import daemonkit

BEGIN, END = "<!-- freshness:begin (benchmarks/freshness.py writes this section) -->", "<!-- freshness:end -->"
SECTION = page.Section(BEGIN, END)
SIZE, MAX_AGE, MIN_MAX_AGE = 120, 270, 20
POPS_PER_S = 1.0
THINK = (0.0, 2.0)  # seconds between a pop and its start
FAIL_AFTER, P_FAIL = 60, 0.3
RATE, SIM_RATE = 8, 10
LAST = 300.0  # the last 5 minutes
LOOK = 5.0  # seconds between looks at the effective max_age
WASTE_NOTE = (
    "Waste counts the IDs that expired unused by the end of the run: arm `auto` keeps its standing size of 120 for "
    "the shorter life (the refill counts entries past the effective max_age as not ready and acquires young ones; "
    "the old ones stay queued for the probes until they expire), so it acquires more; a pool meant to run at 30 s "
    "would be given a smaller size."
)


@dataclass
class Arm:
    name: str
    auto: bool
    prefix: str
    starts: list[tuple[float, bool, float]] = field(default_factory=list)  # (t, ok, age at pop s)
    misses: int = 0
    retries_429: int = 0
    timeline: list[tuple[float, float, str]] = field(default_factory=list)  # (t, effective s, reason)
    acquired: int = 0
    expired: int = 0
    start_failed: int = 0

    def rate(self, since: float = 0.0) -> tuple[int, int]:
        picked = [ok for t, ok, _ in self.starts if t >= since]
        return len(picked), picked.count(False)


def config(arm: Arm, redis_url: str, sim_url: str) -> dict[str, object]:
    pool = {
        "name": "web",
        "appid": APPID,
        "cname": "web-{uuid}",
        "uid": UID,
        "scene": 1,
        "size": SIZE,
        "max_age": MAX_AGE,
        "auto_max_age": arm.auto,
        **({"min_max_age": MIN_MAX_AGE} if arm.auto else {}),
    }
    return {
        "redis": {"url": redis_url, "key_prefix": arm.prefix},
        "agora": {"base_url": sim_url, "rate_limit": RATE, "timeout": 10.0},
        "pools": [pool],
    }


async def start(http: httpx.AsyncClient, agora: str, resource_id: str, cname: str) -> tuple[int, str]:
    url = f"{agora}/v1/apps/{APPID}/cloud_recording/resourceid/{resource_id}/mode/mix/start"
    answer = await http.post(url, json={"cname": cname, "uid": UID, "clientRequest": {}}, auth=(CUSTOMER_ID, SECRET))
    data = answer.json()
    return answer.status_code, str(data.get("code", answer.status_code)) if isinstance(data, dict) else "?"


async def starter(
    arm: Arm, client: AsyncPoolClient, http: httpx.AsyncClient, agora: str, think: float, t0: float
) -> None:
    """Pop, wait `think` seconds, start (again after a 429), report."""
    try:
        entry = await client.pop("web", min_ttl=2.0)
    except (PoolEmpty, RidpoolError):
        arm.misses += 1
        return
    age = MAX_AGE - (entry.expires_in or 0.0)
    await asyncio.sleep(think)
    status, code = await start(http, agora, entry.resource_id, entry.cname)
    while status == 429:
        arm.retries_429 += 1
        await asyncio.sleep(0.5)
        status, code = await start(http, agora, entry.resource_id, entry.cname)
    await client.report(entry, ok=status == 200, code=None if status == 200 else code)
    arm.starts.append((time.monotonic() - t0, status == 200, age))


async def watch(arm: Arm, client: AsyncPoolClient, t0: float, until: float) -> None:
    """The effective max_age as stats() shows it, every LOOK seconds; each change is kept with its reason."""
    last = None
    while time.monotonic() < until:
        s = await client.stats("web")
        if s.effective_max_age != last:
            last = s.effective_max_age
            arm.timeline.append((time.monotonic() - t0, last, s.freshness.reason if s.freshness else ""))
        await asyncio.sleep(LOOK)


async def run_arm(arm: Arm, redis_url: str, sim: SimProcess, seconds: float, seed: int) -> None:
    cfg = parse_config(config(arm, redis_url, sim.url), source=f"benchmarks.freshness:{arm.name}")
    rng = random.Random(seed)
    r = redis.asyncio.Redis.from_url(redis_url)
    client = AsyncPoolClient(r, prefix=arm.prefix)
    async with (
        daemonkit.running(cfg, timing=REALISTIC, credentials=CREDENTIALS, name=f"{arm.prefix}-"),
        httpx.AsyncClient(timeout=10.0) as http,
    ):

        async def filled() -> bool:
            return (await client.stats("web")).size >= SIZE

        await daemonkit.eventually(filled, timeout=60, what=f"{arm.name}: the pool filled")
        t0 = time.monotonic()
        until = t0 + seconds
        watcher = asyncio.create_task(watch(arm, client, t0, until))
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while time.monotonic() < until:
            task = asyncio.create_task(starter(arm, client, http, sim.url, rng.uniform(*THINK), t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / POPS_PER_S - time.monotonic()))
        await asyncio.gather(*tasks)
        await watcher
        s = await client.stats("web")
        arm.acquired, arm.expired = s.counters["acquires"], s.counters["expired"]
        arm.start_failed = (await sim.stats(http)).start_failed
    await r.aclose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def render(arms: list[Arm], command: str, seconds: float, took: float) -> str:
    lines = [
        BEGIN,
        "## Freshness from evidence (auto_max_age)",
        "",
        f"`{command}` ({took / 60:.1f} min; both arms at once, real time, {seconds / 60:.0f} min of starts each).",
        "",
        "`benchmarks/freshness.py`: the simulator fails 30% of the starts of IDs older than 60 s since their "
        f"acquire; a template pool of size {SIZE}, `max_age = {MAX_AGE}`; starters pop one entry a second (oldest "
        f"first), start it {THINK[0]:g}-{THINK[1]:g} s after the pop and report every start; one daemon per arm "
        f"(rate_limit {RATE}, every other default). Arm `auto`: `auto_max_age = true`, `min_max_age = "
        f"{MIN_MAX_AGE}`; arm `fixed`: `auto_max_age = false`. Both on one Redis under two key prefixes, each "
        "with a simulator of its own.",
        "",
        "| arm | starts | failed | failure rate | last 5 min: starts | failed | failure rate | age at pop p50 / p90 (s)"
        " | misses | acquired | expired unused (waste) | effective max_age at the end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        n, failed = a.rate()
        n5, failed5 = a.rate(seconds - LAST)
        ages = [age for _, _, age in a.starts]
        last = a.timeline[-1][1] if a.timeline else MAX_AGE
        lines.append(
            f"| {a.name} | {n} | {failed} | {failed / max(1, n):.1%} | {n5} | {failed5} | {failed5 / max(1, n5):.1%} "
            f"| {percentile(ages, 50):.0f} / {percentile(ages, 90):.0f} | {a.misses} | {a.acquired} "
            f"| {a.expired} ({a.expired / max(1, a.acquired):.0%}) | {last:g} s |"
        )
    auto = next(a for a in arms if a.auto)
    lines += ["", WASTE_NOTE]
    lines += ["", "The effective max_age of arm `auto` over the run (minute of the run: value, the decision):", ""]
    for t, value, reason in auto.timeline:
        lines.append(f"- {t / 60:4.1f} min: {value:g} s{f' ({reason})' if reason else ''}")
    lines += [END]
    return "\n".join(lines) + "\n"


async def both(redis_url: str, sims: list[SimProcess], arms: list[Arm], seconds: float) -> None:
    await asyncio.gather(*(run_arm(a, redis_url, s, seconds, seed=7) for a, s in zip(arms, sims, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 minutes; writes benchmarks/out/freshness-quick.md")
    args = parser.parse_args(argv)
    seconds = 180.0 if args.quick else 720.0
    md = ROOT / "benchmarks" / "out" / "freshness-quick.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        [".venv/bin/python", "-m", "benchmarks.freshness", *(argv if argv is not None else sys.argv[1:])]
    )
    log.configure(level="warning", json=False)
    began = time.monotonic()
    server = LocalRedis().start()
    faults = ["--start-fail-after", str(FAIL_AFTER), "--p-start-fail", str(P_FAIL)]
    sims = [SimProcess(rate_limit=SIM_RATE, latency=0.15, jitter=0.1, extra=faults) for _ in range(2)]
    arms = [Arm("auto", True, "fresh-auto"), Arm("fixed", False, "fresh-fixed")]
    try:
        asyncio.run(both(server.url, sims, arms, seconds))
    finally:
        for sim in sims:
            sim.stop()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    text = render(arms, command, seconds, time.monotonic() - began)
    if args.quick:
        md.write_text(text)
    else:
        SECTION.write(text, md)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
