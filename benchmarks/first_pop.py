"""Time to first pop: how long a starter waits for a usable resourceId, from a pool or acquiring on demand; and
whether a burst's first call, in a fresh process right after `from_config`, costs what any call costs.

The anchor is what a starter without ridpool does: POST `acquire` itself (httpx, Basic auth, keep-alive) to the
simulator with a realistic latency (0.15 s mean, +-0.1 s). The simulator keeps Agora's real 10/s window, and the
on-demand requests are paced below it (one every 0.11 s, a few in parallel) so that none waits for the budget:
this is on demand at its best, one quiet starter; a burst of starters would also queue behind the 10/s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from ridpool import PoolClient
from ridpool.testing import Faults, Simulator

from benchmarks.common import (
    APPID,
    CUSTOMER_ID,
    PREFIX,
    SECRET,
    UID,
    Sizes,
    clean,
    fill,
    keys_for,
    percentile,
    publish_pool,
)

POOL = "firstpop"
LATENCY, JITTER = 0.15, 0.1
PACE = 0.11  # seconds between on-demand request starts: 9/s, under the simulator's 10/s
WORKERS = 4  # enough in parallel that the pace, not the latency, sets the rate


@dataclass(frozen=True, slots=True)
class Latencies:
    samples: int
    p50_ms: float
    p99_ms: float
    failures: int = 0  # on demand: answers that were not a 200 with an ID (a 429 would count here)


@dataclass(frozen=True, slots=True)
class FirstCall:
    """A burst's first call in a fresh starter process (after `PoolClient.from_config`) against the calls after it."""

    call: str  # "pop", "pop_or_acquire" or "start_slot", each a pool hit
    processes: int
    first_p50_ms: float
    later_p50_ms: float  # the second to fifth call of the same processes

    @property
    def ratio(self) -> float:
        return self.first_p50_ms / self.later_p50_ms


@dataclass(frozen=True, slots=True)
class FirstPopResult:
    hit: Latencies
    on_demand: Latencies
    first_calls: tuple[FirstCall, ...] = ()

    @property
    def p50_ratio(self) -> float:
        return self.on_demand.p50_ms / self.hit.p50_ms

    @property
    def p99_ratio(self) -> float:
        return self.on_demand.p99_ms / self.hit.p99_ms


def _summary(seconds: list[float], failures: int = 0) -> Latencies:
    ms = [s * 1000 for s in seconds]
    return Latencies(len(ms), percentile(ms, 50), percentile(ms, 99), failures)


def _pool_hits(r: redis.Redis, url: str, n: int) -> Latencies:
    keys = keys_for(POOL)
    publish_pool(r, keys, size=n)
    fill(r, keys, n)
    samples = []
    with PoolClient.from_url(url, prefix=PREFIX) as client:
        client.redis.ping()  # a starter keeps its Redis connection; the pop is the one round trip it pays
        for _ in range(n):
            t0 = time.perf_counter()
            client.pop(POOL)  # PoolEmpty would abort: every sample is a hit
            samples.append(time.perf_counter() - t0)
    return _summary(samples)


def _on_demand(n: int) -> Latencies:
    sim = Simulator(
        customer_id=CUSTOMER_ID, customer_secret=SECRET, rate_limit=10, faults=Faults(latency=LATENCY, jitter=JITTER)
    ).start()
    url = f"{sim.url}/v1/apps/{APPID}/cloud_recording/acquire"
    lock = threading.Lock()
    next_start = [time.perf_counter()]
    issued = [0]
    samples: list[float] = []
    failures = [0]

    def slot() -> float | None:
        """The start time of the next request, or None when all `n` are taken."""
        with lock:
            if issued[0] >= n:
                return None
            issued[0] += 1
            at = max(next_start[0], time.perf_counter())
            next_start[0] = at + PACE
            return at

    def work() -> None:
        with httpx.Client(auth=(CUSTOMER_ID, SECRET), timeout=10.0) as http:
            while (at := slot()) is not None:
                time.sleep(max(0.0, at - time.perf_counter()))
                body = {"cname": f"web-{uuid.uuid4().hex}", "uid": UID, "clientRequest": {"scene": 1}}
                t0 = time.perf_counter()
                response = http.post(url, json=body)
                took = time.perf_counter() - t0
                ok = response.status_code == 200 and isinstance(response.json().get("resourceId"), str)
                with lock:
                    if ok:
                        samples.append(took)
                    else:
                        failures[0] += 1

    try:
        threads = [threading.Thread(target=work) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sim.stop()
    return _summary(samples, failures[0])


# One fresh starter process: the daemon's config, `from_config`, then five pool hits of one kind, timed, each after
# the same idle pause (a starter waits for its class to begin; a CPU back from idle answers a round trip slower, so
# the calls after the first are timed after the same pause, or the figure would compare idle with busy).
_FRESH = """
import sys, time
from ridpool import PoolClient
client = PoolClient.from_config(sys.argv[1])
times = []
for _ in range(5):
    time.sleep(IDLE)
    t0 = time.perf_counter()
    if sys.argv[2] == "start_slot":
        with client.start_slot("firstpop"):
            pass
    else:
        getattr(client, sys.argv[2])("firstpop")
    times.append(time.perf_counter() - t0)
print(" ".join(str(t) for t in times))
client.close()
"""
FRESH_PROCESSES = 20
IDLE = 0.05  # seconds before each timed call
FRESH_RATE = 1000  # the config's rate_limit: start_slot's turns come at once, so the figure is the call's own cost


def _first_calls(r: redis.Redis, url: str, processes: int) -> tuple[FirstCall, ...]:
    """Is the first call of a burst as cheap as any? Each process makes five pool hits right after from_config
    (the daemon extra installed: the acquirer is built too), each after the same pause; the first against the other
    four."""
    keys = keys_for(POOL)
    publish_pool(r, keys, size=processes * 5)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "ridpool.toml"
        config.write_text(
            f'[redis]\nurl = "{url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "http://127.0.0.1:1"\n'
            f'rate_limit = {FRESH_RATE}\n[[pools]]\nname = "{POOL}"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\n'
            f'scene = 1\nuid = "{UID}"\n'
        )
        env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
        out = []
        for call in ("pop", "pop_or_acquire", "start_slot"):
            first, later = [], []
            for _ in range(processes):
                fill(r, keys, 5)
                done = subprocess.run(
                    [sys.executable, "-c", _FRESH.replace("IDLE", str(IDLE)), str(config), call],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                times = [float(t) * 1000 for t in done.stdout.split()]
                first.append(times[0])
                later.extend(times[1:])
            out.append(FirstCall(call, processes, percentile(first, 50), percentile(later, 50)))
    return tuple(out)


def run(r: redis.Redis, url: str, sizes: Sizes) -> FirstPopResult:
    clean(r)
    hit = _pool_hits(r, url, sizes.first_pop_samples)
    on_demand = _on_demand(sizes.first_pop_samples)
    clean(r)
    first_calls = _first_calls(r, url, min(FRESH_PROCESSES, sizes.first_pop_samples))
    for fc in first_calls:
        print(
            f"  first {fc.call} after from_config: p50 {fc.first_p50_ms:.3f} ms, later calls {fc.later_p50_ms:.3f} ms "
            f"({fc.ratio:.2f}x, {fc.processes} processes)",
            flush=True,
        )
    result = FirstPopResult(hit, on_demand, first_calls)
    print(
        f"  first pop: hit p50 {hit.p50_ms:.3f} ms p99 {hit.p99_ms:.3f} ms; on demand p50 {on_demand.p50_ms:.0f} ms "
        f"p99 {on_demand.p99_ms:.0f} ms ({on_demand.failures} failures)",
        flush=True,
    )
    clean(r)
    return result
