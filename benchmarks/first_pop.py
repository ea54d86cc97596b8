"""Time to first pop: how long a starter waits for a usable resourceId, from a pool or acquiring on demand.

The anchor is what a starter without ridpool does: POST `acquire` itself (httpx, Basic auth, keep-alive) to the
simulator with a realistic latency (0.15 s mean, +-0.1 s). The simulator keeps Agora's real 10/s window, and the
on-demand requests are paced below it (one every 0.11 s, a few in parallel) so that none waits for the budget:
this is on demand at its best, one quiet starter; a burst of starters would also queue behind the 10/s.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

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
class FirstPopResult:
    hit: Latencies
    on_demand: Latencies

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


def run(r: redis.Redis, url: str, sizes: Sizes) -> FirstPopResult:
    clean(r)
    hit = _pool_hits(r, url, sizes.first_pop_samples)
    on_demand = _on_demand(sizes.first_pop_samples)
    result = FirstPopResult(hit, on_demand)
    print(
        f"  first pop: hit p50 {hit.p50_ms:.3f} ms p99 {hit.p99_ms:.3f} ms; on demand p50 {on_demand.p50_ms:.0f} ms "
        f"p99 {on_demand.p99_ms:.0f} ms ({on_demand.failures} failures)",
        flush=True,
    )
    clean(r)
    return result
