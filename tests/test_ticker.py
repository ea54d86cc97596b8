"""Scheduling survives steps of the host's wall clock: the ticker runs on an injected monotonic clock."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis
from ridpool import keys as keyspace
from ridpool.daemon.ticker import every
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool


class FakeClock:
    """A monotonic clock that only moves when slept on, or when a job takes time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("durations", "starts"),
    [
        ([0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]),  # on time
        ([0.3, 0.3, 0.3, 0.3], [0.0, 1.0, 2.0, 3.0]),  # a job's own time is inside the interval
        ([2.5, 0.0, 0.0, 0.0], [0.0, 2.5, 3.5, 4.5]),  # an overrun delays the next run; no burst of catch-up runs
        ([0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]),  # exactly the interval: the next starts at once
    ],
)
async def test_every_runs_on_the_monotonic_clock(durations: list[float], starts: list[float]) -> None:
    """Runs start at once, then one interval after the previous start, later after an overrun, never twice."""
    clock = FakeClock()
    seen: list[float] = []

    async def job() -> None:
        seen.append(clock.now - 1000.0)
        clock.now += durations[len(seen) - 1]
        if len(seen) == len(durations):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await every(1.0, job, clock=clock, sleep=clock.sleep)
    assert seen == starts


async def test_wall_clock_steps_do_not_stop_heartbeat_or_refill(
    r: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's wall clock steps an hour back, then two forward: heartbeats and refill go on meanwhile."""
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    real = time.time
    try:
        async with running(make_config(redis_url, sim.url, web_pool(2))) as (daemon,):
            beats = keyspace.replicas(PREFIX)

            def beat() -> float:
                return float(r.zscore(beats, daemon.replica_id) or 0)

            await eventually(beat, 5, "a first heartbeat")
            for step in (-3600.0, +7200.0):
                monkeypatch.setattr(time, "time", lambda step=step: real() + step)
                last = beat()
                await eventually(lambda last=last: beat() > last, 5, f"a heartbeat after a {step:+.0f} s step")
            r.delete(keyspace.pool_keys(PREFIX, "web").queue(None))
            await eventually(lambda: r.zcard(keyspace.pool_keys(PREFIX, "web").queue(None)) == 2, 10, "refilled")
    finally:
        monkeypatch.setattr(time, "time", real)
        sim.stop()


async def test_a_set_stop_ends_the_ticker_even_when_a_job_swallowed_its_cancellation() -> None:
    """Shutdown never waits on a ticker for ever: once `stop` is set, `every` returns after the running job,
    even when that job swallowed the cancellation meant for the ticker."""
    stop = asyncio.Event()
    started = asyncio.Event()
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # never set: only the cancellation ends it, and it is swallowed

    task = asyncio.create_task(every(0.0, job, stop=stop))
    await started.wait()
    stop.set()
    task.cancel()
    await asyncio.wait_for(task, 1.0)
    assert runs == 1
