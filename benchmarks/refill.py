"""Refill rate: acquires per second that 1 and 3 daemon replicas achieve against Agora's 10/s ceiling.

The anchor is the ceiling itself, enforced by the simulator (a strict sliding 1 s window, rate_limit=10, in a
process of its own: see SimProcess) with the daemons configured at the same 10/s. The pool is far too big to fill
during the measurement, so the daemons ask for all the budget allows the whole time; only a steady window after a
warm-up is counted, from the simulator's own count of IDs it issued, sampled every 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy
import redis
from ridpool.daemon.limiter import window_for

from benchmarks.common import SimProcess, Sizes, clean, daemon_config, fcalls, parse, running, web_pool

CEILING = 10
POOL_SIZE, POOL_IN_FLIGHT, ACCOUNT_IN_FLIGHT = 400, 20, 10
LATENCY, JITTER = 0.15, 0.1
SAMPLE_EVERY = 0.02


@dataclass(frozen=True, slots=True)
class RefillResult:
    replicas: int
    starved: bool  # the daemons' core shared with two busy processes (a stress run, not held to the target)
    acquired: int  # in the steady window
    seconds: float
    slope: float  # acquires/s: least-squares slope of the simulator's count over the window
    rate_limited: int  # real 429s: the ceiling was crossed
    max_in_window: int  # the most requests the simulator saw in any 1 s window
    requests: int
    fcalls_per_acquire: float  # ridpool steps Redis ran per acquire: take + reserve + add = 3, more = refused takes

    @property
    def per_second(self) -> float:
        # Where the budget grants in bunches (a sliding log refills as its oldest grants age out), a plain count
        # over a window moves by a whole bunch with the window's phase: 140 or 150 in 15 s for bunches of 10.
        # The slope of the count sampled every 20 ms stays within 0.2% of the true rate whatever the phase.
        return self.slope

    @property
    def ratio(self) -> float:
        return self.per_second / CEILING


async def _measure(redis_url: str, replicas: int, sizes: Sizes, *, sim_core: int | None = None) -> RefillResult:
    sim = SimProcess(rate_limit=CEILING, latency=LATENCY, jitter=JITTER)
    if sim_core is not None:
        os.sched_setaffinity(sim.process.pid, {sim_core})
    try:
        config = parse(
            daemon_config(
                redis_url,
                sim.url,
                web_pool(POOL_SIZE, POOL_IN_FLIGHT),
                rate_limit=CEILING,
                max_in_flight=ACCOUNT_IN_FLIGHT,
            )
        )
        series: list[tuple[float, int]] = []
        r = redis.Redis.from_url(redis_url)
        async with httpx.AsyncClient() as http, running(config, replicas=replicas):
            await asyncio.sleep(sizes.refill_warmup)
            t0, f0 = time.monotonic(), fcalls(r)
            while (now := time.monotonic()) < t0 + sizes.refill_window:
                series.append((now - t0, (await sim.stats(http)).acquired))
                await asyncio.sleep(SAMPLE_EVERY)
            series.append((time.monotonic() - t0, (await sim.stats(http)).acquired))
            f1 = fcalls(r)
        r.close()
        stats = sim.stats_sync()
    finally:
        sim.stop()
    slope = float(numpy.polyfit([t for t, _ in series], [a for _, a in series], 1)[0])
    (ta, a0), (tb, a1) = series[0], series[-1]
    return RefillResult(
        replicas,
        sim_core is not None,
        a1 - a0,
        tb - ta,
        slope,
        stats.rate_limited,
        stats.max_in_window,
        stats.requests,
        (f1 - f0) / max(1, a1 - a0),
    )


@contextlib.contextmanager
def starved(redis_pid: int) -> Iterator[int | None]:
    """Give this process (the in-process daemons) one core shared with two busy processes, and keep the other
    core for Redis and the simulator: a daemon short of CPU, as in a throttled container, facing a healthy Agora.
    Yields the core the simulator must be pinned to, or None (and changes nothing) without two cores."""
    original = os.sched_getaffinity(0)
    if len(original) < 2:
        yield None
        return
    fast, slow = sorted(original)[:2]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for hog in hogs:
            os.sched_setaffinity(hog.pid, {slow})
        os.sched_setaffinity(redis_pid, {fast})
        os.sched_setaffinity(0, {slow})  # this thread, which runs the daemons' event loop
        yield fast
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        os.sched_setaffinity(0, original)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(redis_pid, original)


def run(r: redis.Redis, redis_url: str, redis_pid: int, sizes: Sizes) -> list[RefillResult]:
    results = []
    for replicas, starve in ((1, False), (3, False), (1, True)):
        clean(r)  # a fresh account budget and pool for each run
        if starve:
            with starved(redis_pid) as sim_core:
                if sim_core is None:
                    continue
                result = asyncio.run(_measure(redis_url, replicas, sizes, sim_core=sim_core))
        else:
            result = asyncio.run(_measure(redis_url, replicas, sizes))
        results.append(result)
        print(
            f"  refill {replicas} replica(s){' starved' if starve else ''}: {result.per_second:.2f}/s, "
            f"429s {result.rate_limited}, max in window {result.max_in_window}",
            flush=True,
        )
    clean(r)
    return results


def sustained_design_rate() -> float:
    """What the limiter is built to sustain at 10/s: `limit` grants per (1 s + jitter margin) window."""
    return window_for(CEILING).sustained
