"""What every benchmark shares: sizes, the machine, latency summaries, realistic entries, in-process daemons.

Entries are filled through the real `ridpool_add` function (what the daemon calls), never written by hand, so the
pool's keys (queue, ledger, ready list, counters) hold exactly what they hold in production.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from ridpool import functions
from ridpool.daemon.config import Config, Credentials, parse_config
from ridpool.daemon.localredis import free_port
from ridpool.daemon.service import Timing
from ridpool.entry import Entry, encode
from ridpool.keys import PoolKeys, pool_keys
from ridpool.meta import PoolMeta, publish
from ridpool.testing import SimStats

from tests import daemonkit

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"
APPID = "0123456789abcdef0123456789abcdef"
UID = "527841"
CUSTOMER_ID = "bench-customer"
SECRET = "bench-secret-not-a-real-one"
CREDENTIALS = Credentials(customer_id=CUSTOMER_ID, customer_secret=SECRET)  # type: ignore[arg-type]
# Agora's resourceIds are about 240 characters; the simulator issues token_urlsafe(180), which is exactly 240.
RID_BYTES = 180
# Below Agora's five minutes (ridpool_add refuses more) and long enough to outlive any one round here.
ENTRY_LIFE_MS = 240_000
# What a deployment would run: the daemon's default intervals, tick shortened only so that rounds start promptly.
REALISTIC = Timing(tick=0.2, backoff_scale=1.0)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each benchmark does; `--quick` shrinks every figure for a smoke run (numbers then mean little)."""

    pop_ops: int  # Python pops per variant (sequential, 16 threads, 16 asyncio tasks)
    pop_rounds: int  # alternating anchor/subject rounds, so drift hits both alike
    bench_ops: int  # redis-benchmark requests per command (the pool is filled with exactly this many)
    refill_warmup: float
    refill_window: float
    memory_entries: int
    first_pop_samples: int
    cpu_window: float
    timeline_seconds: float


FULL = Sizes(
    pop_ops=20_000,
    pop_rounds=4,
    bench_ops=100_000,
    refill_warmup=2.0,
    refill_window=15.0,
    memory_entries=1_000,
    first_pop_samples=200,
    cpu_window=10.0,
    timeline_seconds=30.0,
)
QUICK = Sizes(
    pop_ops=2_000,
    pop_rounds=2,
    bench_ops=10_000,
    refill_warmup=1.0,
    refill_window=3.0,
    memory_entries=200,
    first_pop_samples=20,
    cpu_window=2.0,
    timeline_seconds=8.0,
)


# -- the machine -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    python: str
    redis: str
    date: str
    load: str  # /proc/loadavg when the run began: other work on the machine skews every figure


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine(r: redis.Redis, load: str) -> Machine:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    info: dict[str, Any] = r.info("server")
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        redis=str(info.get("redis_version", "?")),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load=load,
    )


# -- latency summaries -------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: a value that was actually observed, never an interpolation."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# -- realistic entries -------------------------------------------------------------------------------------


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def publish_pool(r: redis.Redis, keys: PoolKeys, *, cnames: tuple[str, ...] | None = None, size: int = 0) -> None:
    publish(r, keys, PoolMeta(keys.pool, APPID, cnames, size, ENTRY_LIFE_MS / 1000))


def make_entry(pool: str, now_ms: int, *, cname: str | None = None, uid: str = UID) -> Entry:
    """An entry shaped like one the daemon stores from the simulator: 240-character resourceId, a web label from
    the `web-{uuid}` template, a 32-hex X-Request-Id."""
    return Entry(
        resource_id=secrets.token_urlsafe(RID_BYTES),
        appid=APPID,
        cname=cname or f"web-{uuid.uuid4().hex}",
        uid=uid,
        pool=pool,
        sent_at_ms=now_ms,
        expires_at_ms=now_ms + ENTRY_LIFE_MS,
        request_id=uuid.uuid4().hex,
    )


def fill(
    r: redis.Redis, keys: PoolKeys, n: int, *, cname: str | None = None, uids: Sequence[str] = (), batch: int = 2_000
) -> None:
    """Add `n` fresh entries with `ridpool_add`, pipelined; `cname` targets a named channel's queue and `uids`
    (one per entry) fills the uids index as a uid_range pool does. Fails loudly on anything but ADDED."""
    functions.load_library(r)
    now = server_ms(r)
    for start in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            uid = uids[i] if uids else UID
            entry = make_entry(keys.pool, now, cname=cname, uid=uid)
            call = functions.add_call(keys, entry, queue_cname=cname, uid=uid if uids else "")
            pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
        replies = pipe.execute()
        if any(reply != b"ADDED" for reply in replies):
            raise RuntimeError(f"filling {keys.pool}: not every add was ADDED ({set(replies)})")


def encoded_entries(pool: str, n: int, now_ms: int) -> list[bytes]:
    """Stored-form entries (msgpack), for the bare-LPOP anchor: the same bytes a pop's queue holds."""
    return [encode(make_entry(pool, now_ms)) for _ in range(n)]


def stat(r: redis.Redis, keys: PoolKeys, field: str) -> int:
    value = r.hget(keys.stats, field)
    return int(value) if value is not None else 0


def fcalls(r: redis.Redis) -> int:
    """FCALLs Redis has run since its counters were last reset (every ridpool step is one)."""
    return int(r.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))


def clean(r: redis.Redis) -> None:
    """Each benchmark starts from an empty Redis: no keys, no shared budget left over, no library."""
    r.flushall()
    r.function_flush()


# -- the simulator in a process of its own -----------------------------------------------------------------


class SimProcess:
    """`ridpool simulate` in its own process, read through its /_sim/stats endpoint.

    Why not in this process: the simulator timestamps each request when its handler thread gets the GIL. In the
    process that also runs the daemons' event loop, those timestamps lag by however long the loop holds the GIL,
    unevenly from request to request, which makes requests sent 1.05 s apart look less than 1 s apart: a rate
    window that exists only in the measurement. Agora's clock is not tied to the client's GIL either.
    """

    def __init__(self, *, rate_limit: int, latency: float, jitter: float, extra: Sequence[str] = ()) -> None:
        """`extra`: more `ridpool simulate` flags (faults such as --start-fail-after)."""
        self.port = free_port()
        argv = [*ridpool_argv(), "simulate", "--host", "127.0.0.1", "--port", str(self.port)]
        self.serve([*argv, "--rate-limit", str(rate_limit), "--latency", str(latency), "--jitter", str(jitter), *extra])

    def serve(self, argv: list[str]) -> None:
        """Run `argv` (a simulator listening on self.port) and return once it answers."""
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.stats_sync()
                break
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the simulator process did not come up") from None
                time.sleep(0.05)

    def stats_sync(self) -> SimStats:
        return SimStats(**httpx.get(f"{self.url}/_sim/stats", timeout=2.0).json())

    async def stats(self, http: httpx.AsyncClient) -> SimStats:
        return SimStats(**(await http.get(f"{self.url}/_sim/stats", timeout=2.0)).json())

    def stop(self) -> None:
        terminate(self.process)


def terminate(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- daemons in this process -------------------------------------------------------------------------------


def web_pool(size: int, max_in_flight: int, name: str = "web") -> dict[str, Any]:
    return {
        "name": name,
        "appid": APPID,
        "cname": "web-{uuid}",
        "uid": UID,
        "scene": 1,
        "size": size,
        "max_age": 270,
        "max_in_flight": max_in_flight,
    }


def daemon_config(
    redis_url: str, sim_url: str, *pools: dict[str, Any], rate_limit: float, max_in_flight: int = 10
) -> dict[str, Any]:
    """A config as its TOML file would read (also written to disk for the subprocess daemon)."""
    return {
        "redis": {"url": redis_url, "key_prefix": PREFIX},
        "agora": {"base_url": sim_url, "rate_limit": rate_limit, "max_in_flight": max_in_flight, "timeout": 10.0},
        "pools": list(pools),
    }


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, source="benchmarks")


def running(config: Config, *, replicas: int = 1, timing: Timing = REALISTIC) -> AbstractAsyncContextManager[Any]:
    """Run `replicas` symmetric daemons in this event loop until the block ends: the tests' own harness."""
    return daemonkit.running(config, replicas=replicas, timing=timing, credentials=CREDENTIALS, name="bench-")


def keys_for(pool: str) -> PoolKeys:
    return pool_keys(PREFIX, pool)


def ridpool_argv() -> list[str]:
    """How to run the `ridpool` command of this interpreter's install (its script, else `python -m`)."""
    script = Path(sys.executable).with_name("ridpool")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ridpool.cli"]
