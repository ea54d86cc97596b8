"""One run over time: a daemon fills a pool of 40 from empty while a starter pops 2/s; sampled every 0.5 s.

The anchor is the pops themselves: once the pool is full, every acquire should replace a pop, so acquires per pop
over the rest of the run should be 1.0 (more: IDs acquired that nobody took; fewer: the pool drains).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render straight to a PNG
import matplotlib.pyplot as plt
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, PoolEmpty
from ridpool.testing import Faults, Simulator

from benchmarks.common import (
    CUSTOMER_ID,
    PREFIX,
    SECRET,
    Sizes,
    clean,
    daemon_config,
    keys_for,
    parse,
    running,
    web_pool,
)

POOL, SIZE = "timeline", 40
POP_EVERY = 0.5
SAMPLE_EVERY = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    size: int
    pops: int
    misses: int
    acquires: int


@dataclass(frozen=True, slots=True)
class TimelineResult:
    samples: list[Sample]
    full_at: float | None  # first sample with the pool within one entry of its target
    steady_acquires: int  # after full_at
    steady_pops: int

    @property
    def ratio(self) -> float:
        return self.steady_acquires / self.steady_pops if self.steady_pops else float("nan")


async def _run(redis_url: str, seconds: float) -> list[Sample]:
    sim = Simulator(
        customer_id=CUSTOMER_ID, customer_secret=SECRET, rate_limit=10, faults=Faults(latency=0.15, jitter=0.1)
    ).start()
    keys = keys_for(POOL)
    config = parse(daemon_config(redis_url, sim.url, web_pool(SIZE, 10, name=POOL), rate_limit=10))
    samples: list[Sample] = []
    pops = misses = 0
    r = redis.asyncio.Redis.from_url(redis_url)
    client = AsyncPoolClient.from_url(redis_url, prefix=PREFIX)
    try:
        async with running(config):
            # The clock starts once the daemon has published the pool (a few ms): before that a pop would be
            # refused as an unknown pool, which is not what this run is about.
            while not await r.exists(keys.meta):
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            samples.append(Sample(0.0, await r.zcard(keys.queue(None)), 0, 0, sim.stats().acquired))

            async def consume() -> None:
                nonlocal pops, misses
                k = 0
                while True:
                    await asyncio.sleep(max(0.0, t0 + k * POP_EVERY - time.monotonic()))
                    try:
                        await client.pop(POOL)
                        pops += 1
                    except PoolEmpty:
                        misses += 1
                    k += 1

            consumer = asyncio.create_task(consume())
            # Samples sit halfway between pops, so a sample never races the pop of the same instant.
            for i in range(round(seconds / SAMPLE_EVERY) + 1):
                at = t0 + i * SAMPLE_EVERY + SAMPLE_EVERY / 2
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                size = await r.zcard(keys.queue(None))
                samples.append(Sample(time.monotonic() - t0, size, pops, misses, sim.stats().acquired))
            consumer.cancel()
    finally:
        await client.aclose()
        await r.aclose()
        sim.stop()
    return samples


def _plot(result: TimelineResult, path: Path) -> None:
    s = result.samples
    t = [x.t for x in s]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=(1, 1.2))
    top.plot(t, [x.size for x in s], color="tab:blue", label="entries ready")
    top.axhline(SIZE, color="grey", linestyle="--", linewidth=1, label=f"target ({SIZE})")
    top.set_ylabel("pool size")
    top.set_ylim(0, SIZE * 1.25)
    top.legend(loc="lower right")
    top.set_title(f"ridpool: a daemon (10/s budget) fills a pool of {SIZE} while a starter pops 2/s")
    bottom.plot(t, [x.acquires for x in s], color="tab:green", label="acquires (cumulative)")
    bottom.plot(t, [x.pops for x in s], color="tab:orange", label="pops served (cumulative)")
    bottom.plot(t, [x.misses for x in s], color="tab:red", label="pops missed (cumulative)")
    if result.full_at is not None:
        for ax in (top, bottom):
            ax.axvline(result.full_at, color="grey", linestyle=":", linewidth=1)
        top.annotate(f" full at {result.full_at:.1f} s", (result.full_at, SIZE * 0.15), color="grey", fontsize=9)
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("count")
    bottom.legend(loc="upper left")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(r: redis.Redis, redis_url: str, sizes: Sizes, png: Path) -> TimelineResult:
    clean(r)
    samples = asyncio.run(_run(redis_url, sizes.timeline_seconds))
    # "Full" is within one entry of the target: samples fall 0.25 s after a pop and a replacement takes a tick plus
    # Agora's latency, so a full pool under a steady 2/s is usually seen at 39.
    full = next((x for x in samples if x.size >= SIZE - 1), None)
    last = samples[-1]
    result = TimelineResult(
        samples,
        full.t if full else None,
        last.acquires - full.acquires if full else 0,
        last.pops - full.pops if full else 0,
    )
    _plot(result, png)
    print(
        f"  timeline: full at {result.full_at}, then {result.steady_acquires} acquires for {result.steady_pops} pops, "
        f"{last.misses} misses",
        flush=True,
    )
    clean(r)
    return result
