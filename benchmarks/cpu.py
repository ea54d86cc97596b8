"""Daemon CPU seconds per 1,000 acquires, against a bare httpx client doing the same requests.

The daemon runs as it is deployed, `ridpool run -c FILE` in its own process (default log level, JSON logs to a
file), against a simulator with a high rate limit and no latency, filling a pool too big to fill during the
measurement: it acquires as fast as its 200/s budget allows. CPU time (user + system) comes from /proc/PID/stat
(psutil is not a dependency) between two instants of a steady window, so interpreter start-up is not counted.

The anchor (benchmarks/acquire_loop.py) is measured the same way at the same request rate: the ratio is what the
daemon's machinery (budget, leases, stores, scheduler, logs) costs on top of the HTTP requests themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from ridpool.testing import Faults, Simulator

from benchmarks.common import CUSTOMER_ID, PREFIX, ROOT, SECRET, Sizes, clean, fcalls, ridpool_argv

RATE = 200  # the simulator's and the daemon's: far above Agora's default, so the CPU is what limits
POOL_SIZE = 5_000
IN_FLIGHT = 20
WARMUP_ACQUIRES = 100  # counted only once this many went through: connections open, code paths warm
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOGS = ROOT / "benchmarks" / "out"  # kept after the run (git-ignored): what the daemon logged while measured


@dataclass(frozen=True, slots=True)
class CpuSample:
    cpu_seconds: float
    acquires: int
    seconds: float
    rate_limited: int
    fcalls_per_acquire: float  # ridpool steps in Redis per acquire (0 for the anchor, which uses no Redis)

    @property
    def per_1000(self) -> float:
        return self.cpu_seconds / self.acquires * 1000

    @property
    def per_second(self) -> float:
        return self.acquires / self.seconds

    @property
    def core_share(self) -> float:
        """Fraction of one core used while acquiring at this rate."""
        return self.cpu_seconds / self.seconds


@dataclass(frozen=True, slots=True)
class CpuResult:
    daemon: CpuSample
    anchor: CpuSample

    @property
    def ratio(self) -> float:
        return self.daemon.per_1000 / self.anchor.per_1000


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _config_toml(redis_url: str, sim_url: str) -> str:
    return f"""# written by benchmarks/cpu.py
[redis]
url = "{redis_url}"
key_prefix = "{PREFIX}"

[agora]
base_url = "{sim_url}"
rate_limit = {RATE}
max_in_flight = {IN_FLIGHT}

[[pools]]
name = "cpu"
appid = "0123456789abcdef0123456789abcdef"
cname = "web-{{uuid}}"
uid = "527841"
scene = 1
size = {POOL_SIZE}
max_age = 270
max_in_flight = {IN_FLIGHT}
"""


def _measure(r: redis.Redis, sim: Simulator, argv: Sequence[str], window: float, log: Path) -> CpuSample:
    env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
    start = sim.stats()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while sim.stats().acquired - start.acquired < WARMUP_ACQUIRES:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start acquiring; see {log}")
            time.sleep(0.05)
        c0, s0, t0, f0 = cpu_seconds(proc.pid), sim.stats(), time.monotonic(), fcalls(r)
        time.sleep(window)
        c1, s1, t1, f1 = cpu_seconds(proc.pid), sim.stats(), time.monotonic(), fcalls(r)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    acquires = s1.acquired - s0.acquired
    return CpuSample(c1 - c0, acquires, t1 - t0, s1.rate_limited - s0.rate_limited, (f1 - f0) / max(1, acquires))


def run(r: redis.Redis, redis_url: str, sizes: Sizes) -> CpuResult:
    clean(r)
    LOGS.mkdir(parents=True, exist_ok=True)
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, rate_limit=RATE, faults=Faults()).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ridpool-bench-") as tmp:
            config = Path(tmp) / "cpu.toml"
            config.write_text(_config_toml(redis_url, sim.url))
            daemon = _measure(
                r, sim, [*ridpool_argv(), "run", "-c", str(config)], sizes.cpu_window, LOGS / "cpu-daemon.log"
            )
            time.sleep(1.1)  # let the simulator's 1 s window drain before the anchor starts
            # The anchor runs at the rate the daemon achieved, long enough to cover its warm-up and the window.
            anchor_argv = [sys.executable, "-m", "benchmarks.acquire_loop", sim.url, f"{daemon.per_second:.1f}"]
            anchor_argv += [str(IN_FLIGHT), f"{sizes.cpu_window + 10:.1f}"]
            anchor = _measure(r, sim, anchor_argv, sizes.cpu_window, LOGS / "cpu-anchor.log")
    finally:
        sim.stop()
    result = CpuResult(daemon, anchor)
    print(
        f"  cpu: daemon {daemon.per_1000:.2f} s/1000 at {daemon.per_second:.0f}/s, "
        f"bare httpx {anchor.per_1000:.2f} s/1000 at {anchor.per_second:.0f}/s",
        flush=True,
    )
    clean(r)
    return result
