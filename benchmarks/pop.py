"""Pop cost: `PoolClient.pop` (one `FCALL ridpool_pop`) against a bare `LPOP` of a same-sized value.

The anchor is the cheapest thing a pool could be: a Redis list of the very bytes ridpool stores (msgpack entries of
real size), popped with no checks at all. Both sides run against the same server with the same client library,
sequentially and with 16 concurrent clients, and `redis-benchmark` repeats the comparison without Python in the way.

Every measured pop is a hit: each round fills exactly as many entries as it then pops, `PoolClient.pop` raises
PoolEmpty on a miss (which would abort the run), a bare LPOP answering nil aborts it too, and afterwards the queue
or list must be empty and the pool's `pops` counter must have grown by exactly the number of calls with no `misses`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.utils import HIREDIS_AVAILABLE
from ridpool import AsyncPoolClient, PoolClient, functions
from ridpool.keys import pool_keys
from ridpool.plans import check_wait

from benchmarks.common import PREFIX, Sizes, clean, encoded_entries, fill, keys_for, percentile, publish_pool, server_ms

POOL = "popbench"
CONCURRENCY = 16
BREAKDOWN_ROUNDS = 7
# What redis-benchmark calls: the pop documented for clients in any language (field/value pairs), as the README
# tells a non-Python starter to call it.
BENCH_FUNCTION = "ridpool_pop"
# (is it ridpool's pop?, how many pops) -> the round's summary and every latency in ns
Runner = Callable[[bool, int], tuple["Throughput", list[int]]]


@dataclass(frozen=True, slots=True)
class Throughput:
    ops: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds


@dataclass(frozen=True, slots=True)
class PopPair:
    """One way of calling, measured for the anchor (bare LPOP) and for ridpool's pop."""

    mode: str
    client: str
    anchor: Throughput
    subject: Throughput
    anchor_server_us: float  # Redis's own time per call (INFO commandstats), network and client excluded
    subject_server_us: float
    round_ratios: list[float]  # the ratio in each alternating round: how much it moved within the run

    @property
    def ratio(self) -> float:
        """ridpool pops per second as a fraction of bare LPOPs per second (1.0: as fast): the median of the
        rounds' ratios, each taken between neighbouring rounds, so that a burst of other work on the machine
        during one round moves one ratio, not the figure."""
        return statistics.median(self.round_ratios)


def _summary(ops: int, seconds: float, latencies_ns: list[int]) -> Throughput:
    return Throughput(ops, seconds, percentile(latencies_ns, 50) / 1000, percentile(latencies_ns, 99) / 1000)


def _merge(parts: list[Throughput], latencies: list[list[int]]) -> Throughput:
    ops, seconds = sum(p.ops for p in parts), sum(p.seconds for p in parts)
    everything = [x for part in latencies for x in part]
    if everything:
        return _summary(ops, seconds, everything)
    # redis-benchmark reports percentiles, not samples: keep the rounds' mean p50 and their worst p99.
    return Throughput(ops, seconds, sum(p.p50_us for p in parts) / len(parts), max(p.p99_us for p in parts))


# -- preparing a round ------------------------------------------------------------------------------------


class Target:
    """The pool (for ridpool's pop) and the list (for LPOP) a round pops from, filled with exactly `n` entries."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.keys = keys_for(POOL)
        self.list_key = f"{self.keys.tag}:lpop-anchor"
        self.server: dict[bool, list[float]] = {}
        self.reset_server()

    def reset_server(self) -> None:
        self.server = {False: [0, 0.0], True: [0, 0.0]}

    def server_per_call(self, subject: bool) -> float:
        calls, usec = self.server[subject]
        return usec / calls if calls else float("nan")

    def prepare(self, subject: bool, n: int) -> None:
        if subject:
            fill(self.r, self.keys, n)
            self.pops_before = self._counter("pops")
            self.misses_before = self._counter("misses")
        else:
            self.r.delete(self.list_key)
            values = encoded_entries(POOL, n, server_ms(self.r))
            for start in range(0, n, 5_000):
                self.r.rpush(self.list_key, *values[start : start + 5_000])
        # Zero the per-command counters, so what verify() reads is the measured calls' time and nothing else
        # (the fill's own FCALLs included).
        self.r.config_resetstat()

    def server_us(self, subject: bool) -> tuple[int, float]:
        """(calls, total microseconds) Redis spent executing the measured command since prepare()."""
        stats = self.r.info("commandstats").get("cmdstat_fcall" if subject else "cmdstat_lpop", {})
        return int(stats.get("calls", 0)), float(stats.get("usec", 0))

    def verify(self, subject: bool, n: int) -> None:
        """Every call took an entry: the container is empty and (for the pool) the counters agree."""
        calls, usec = self.server_us(subject)  # read first: verify's own commands are not FCALL or LPOP
        self.server[subject][0] += calls
        self.server[subject][1] += usec
        if subject:
            left = self.r.zcard(self.keys.queue(None))
            pops = self._counter("pops") - self.pops_before
            misses = self._counter("misses") - self.misses_before
            if left or pops != n or misses:
                raise RuntimeError(f"pop round not all hits: {left} left, {pops} pops of {n}, {misses} misses")
        elif left := self.r.llen(self.list_key):
            raise RuntimeError(f"LPOP round not all hits: {left} values left")

    def _counter(self, field: str) -> int:
        value = self.r.hget(self.keys.stats, field)
        return int(value) if value is not None else 0


def _shares(n: int, workers: int) -> list[int]:
    """Split `n` calls over the workers so that exactly `n` are made (the round fills exactly `n` entries)."""
    return [n // workers + (1 if i < n % workers else 0) for i in range(workers)]


# -- sync: one thread, or 16 threads each with its own client (its own connection) --------------------------


def _sync_op(url: str, subject: bool, list_key: str) -> tuple[Callable[[], object], Callable[[], None]]:
    if subject:
        client = PoolClient.from_url(url, prefix=PREFIX)
        client.redis.ping()  # connect outside the timed part

        def pop() -> object:
            return client.pop(POOL)  # PoolEmpty on a miss aborts the run

        return pop, client.close
    r = redis.Redis.from_url(url)
    r.ping()

    def lpop() -> object:
        value = r.lpop(list_key)
        if value is None:
            raise RuntimeError("LPOP missed")
        return value

    return lpop, r.close


def _run_sync(url: str, subject: bool, list_key: str, n: int, workers: int) -> tuple[Throughput, list[int]]:
    ops = [_sync_op(url, subject, list_key) for _ in range(workers)]
    shares = _shares(n, workers)
    latencies: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    gate = threading.Barrier(workers + 1)

    def work(i: int) -> None:
        op, lat, clock = ops[i][0], latencies[i], time.perf_counter_ns
        gate.wait()
        try:
            for _ in range(shares[i]):
                t0 = clock()
                op()
                lat.append(clock() - t0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for _, close in ops:
        close()
    if errors:
        raise errors[0]
    flat = [x for lat in latencies for x in lat]
    return _summary(n, seconds, flat), flat


# -- asyncio: 16 tasks, each with its own client ------------------------------------------------------------


async def _async_op(
    url: str, subject: bool, list_key: str
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    if subject:
        client = AsyncPoolClient.from_url(url, prefix=PREFIX)
        await client.redis.ping()

        async def pop() -> object:
            return await client.pop(POOL)

        return pop, client.aclose
    r = redis.asyncio.Redis.from_url(url)
    await r.ping()

    async def lpop() -> object:
        value = await r.lpop(list_key)
        if value is None:
            raise RuntimeError("LPOP missed")
        return value

    return lpop, r.aclose


async def _run_async(url: str, subject: bool, list_key: str, n: int, workers: int) -> tuple[Throughput, list[int]]:
    ops = [await _async_op(url, subject, list_key) for _ in range(workers)]
    shares = _shares(n, workers)
    latencies: list[list[int]] = [[] for _ in range(workers)]

    async def work(i: int) -> None:
        op, lat, clock = ops[i][0], latencies[i], time.perf_counter_ns
        for _ in range(shares[i]):
            t0 = clock()
            await op()
            lat.append(clock() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(workers)))
    seconds = time.perf_counter() - start
    for _, close in ops:
        await close()
    flat = [x for lat in latencies for x in lat]
    return _summary(n, seconds, flat), flat


# -- redis-benchmark: the same two commands with no Python at all ------------------------------------------


def _redis_benchmark(port: int, n: int, command: list[str]) -> Throughput:
    out = subprocess.run(
        [
            *("redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", str(CONCURRENCY)),
            *("--csv", "--precision", "3", *command),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no result: {out.stdout!r} {out.stderr!r}")
    row = rows[-1]
    return Throughput(
        n, n / float(row["rps"]), float(row["p50_latency_ms"]) * 1000, float(row["p99_latency_ms"]) * 1000
    )


# -- the whole figure --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One rung of the sequential breakdown: mean wall time per call and Redis's own share of it."""

    label: str
    wall_us: float
    server_us: float


def breakdown(r: redis.Redis, url: str, target: Target, n: int, rounds: int) -> list[Step]:
    """Where a sequential pop's time goes, from bare LPOP up to `PoolClient.pop`, each step adding one thing:
    the connection settings PoolClient.from_url applies (socket timeouts make every read poll first), the
    function's server work and redis-py's handling of its call and reply (the FCALL the client makes, reply left
    raw), then ridpool's own Python around it."""
    plain = redis.Redis.from_url(url)
    client = PoolClient.from_url(url, prefix=PREFIX)
    # The connection a starter gets from PoolClient.from_url (timeouts, retries), used bare.
    tuned = client.redis
    plain.ping()
    tuned.ping()

    def call() -> functions.Call:  # what PoolClient.pop sends: a request id of its own each time
        return functions.pop_call(target.keys, None, 0.0, request=functions.request_id())

    def lpop() -> object:
        return plain.lpop(target.list_key)

    def lpop_tuned() -> object:
        return tuned.lpop(target.list_key)

    def fcall() -> object:
        c = call()
        return tuned.fcall(c.function, len(c.keys), *c.keys, *c.args)

    def pop() -> object:
        return client.pop(POOL)

    steps = [
        ("bare LPOP", False, lpop),
        ("LPOP on PoolClient's connection settings", False, lpop_tuned),
        (f"FCALL {call().function}, raw reply (same settings)", True, fcall),
        ("PoolClient.pop", True, pop),
    ]
    # Many short rounds and the median per step: on a shared machine a burst of someone else's work lands in a
    # round or two, and the median leaves those out where a mean over one long round would not.
    wall: dict[str, list[float]] = {label: [] for label, _, _ in steps}
    server: dict[str, list[float]] = {label: [] for label, _, _ in steps}
    per_round = n // rounds
    for _ in range(rounds):
        for label, subject, op in steps:
            target.prepare(subject, per_round)
            start = time.perf_counter()
            for _ in range(per_round):
                if op() is None:
                    raise RuntimeError(f"{label} missed")
            wall[label].append((time.perf_counter() - start) / per_round * 1e6)
            calls, usec = target.server_us(subject)
            server[label].append(usec / max(1, calls))
    plain.close()
    client.close()  # closes `tuned` too: it is the client's own connection
    return [Step(label, statistics.median(wall[label]), statistics.median(server[label])) for label, _, _ in steps]


def client_overhead_us(r: redis.Redis, n: int = 20_000) -> float:
    """Python work `PoolClient.pop` adds around the round trip, per pop: naming the keys, checking arguments,
    building the call and turning the reply into an Entry (timed on a real reply, no network)."""
    keys = keys_for(POOL)
    fill(r, keys, 1)
    call = functions.pop_call(keys, None, 0.0)
    reply = r.fcall(call.function, len(call.keys), *call.keys, *call.args)
    start = time.perf_counter()
    for _ in range(n):
        k = pool_keys(PREFIX, POOL)
        check_wait(0.0)
        time.monotonic()
        functions.parse_pop(reply if functions.pop_call(k, None, 0.0, request=functions.request_id()) else None)
    return (time.perf_counter() - start) / n * 1e6


@dataclass(frozen=True, slots=True)
class PopResults:
    pairs: list[PopPair]
    steps: list[Step]
    client_overhead_us: float
    hiredis: bool  # redis-py's C parser; without it replies are parsed in Python
    client_function: str  # the function PoolClient.pop calls (redis-benchmark calls BENCH_FUNCTION)


def run(r: redis.Redis, url: str, port: int, sizes: Sizes) -> PopResults:
    clean(r)
    target = Target(r)
    publish_pool(r, target.keys)
    pairs: list[PopPair] = []

    keys = target.keys
    fcall_args = ["FCALL", BENCH_FUNCTION, "3", keys.meta, keys.stats, keys.queue(None), "", "0", "1"]

    def bench(subject: bool, n: int) -> tuple[Throughput, list[int]]:
        return _redis_benchmark(port, n, fcall_args if subject else ["LPOP", target.list_key]), []

    py_round = sizes.pop_ops // sizes.pop_rounds
    runners: list[tuple[str, str, int, Runner]] = [
        ("sequential", "redis-py", py_round, lambda subject, n: _run_sync(url, subject, target.list_key, n, 1)),
        (
            f"{CONCURRENCY} threads",
            "redis-py",
            py_round,
            lambda subject, n: _run_sync(url, subject, target.list_key, n, CONCURRENCY),
        ),
        (
            f"{CONCURRENCY} asyncio tasks",
            "redis.asyncio",
            py_round,
            lambda subject, n: asyncio.run(_run_async(url, subject, target.list_key, n, CONCURRENCY)),
        ),
        (f"{CONCURRENCY} connections", "redis-benchmark", sizes.bench_ops // sizes.pop_rounds, bench),
    ]
    for mode, client, per_round, runner in runners:
        results: dict[bool, list[tuple[Throughput, list[int]]]] = {False: [], True: []}
        target.reset_server()
        # Anchor and subject alternate round by round, so a slow spell of the machine lands on both.
        for _ in range(sizes.pop_rounds):
            for subject in (False, True):
                target.prepare(subject, per_round)
                results[subject].append(runner(subject, per_round))
                target.verify(subject, per_round)
        merged = {s: _merge([t for t, _ in rs], [lat for _, lat in rs]) for s, rs in results.items()}
        rounds = [b[0].ops_per_s / a[0].ops_per_s for a, b in zip(results[False], results[True], strict=True)]
        pairs.append(
            PopPair(
                mode,
                client,
                merged[False],
                merged[True],
                target.server_per_call(False),
                target.server_per_call(True),
                rounds,
            )
        )
        print(
            f"  pop {mode} ({client}): LPOP {merged[False].ops_per_s:,.0f}/s, pop {merged[True].ops_per_s:,.0f}/s, "
            f"rounds {', '.join(f'{x:.2f}' for x in rounds)}",
            flush=True,
        )
    steps = breakdown(r, url, target, sizes.pop_ops // 2, BREAKDOWN_ROUNDS)
    for step in steps:
        print(f"  pop breakdown {step.label}: {step.wall_us:.1f} us (server {step.server_us:.1f} us)", flush=True)
    overhead = client_overhead_us(r)
    clean(r)
    client_function = functions.pop_call(keys_for(POOL), None, 0.0).function
    return PopResults(pairs, steps, overhead, HIREDIS_AVAILABLE, client_function)
