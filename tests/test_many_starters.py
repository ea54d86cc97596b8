"""Many short-lived starter processes acquiring on the spot at once stay inside the budget: no 429."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from ridpool.testing import SimStats

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET
from tests.poolkit import publish_pool
from tests.servers import free_port, wait_for
from tests.test_ondemand import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ENV = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
RIDPOOL = [sys.executable, "-m", "ridpool.cli"]
STARTERS = 60


@pytest.fixture
def agora() -> Iterator[str]:
    """The simulator in a process of its own (Agora's clock is not the starters'), strict 10/s, 150 ms latency."""
    port = free_port()
    argv = [*RIDPOOL, "simulate", "--host", "127.0.0.1", "--port", str(port), "--rate-limit", "10"]
    proc = subprocess.Popen([*argv, "--latency", "0.15"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/_sim/stats", timeout=1).status_code == 200, 15, what="the simulator")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_sixty_pop_or_acquire_processes_at_once_draw_no_429(
    r: redis.Redis, redis_url: str, agora: str, tmp_path: Path
) -> None:
    """60 `ridpool pop --or-acquire` processes started together on an empty pool (each a starter in line; a grant
    gone stale in a busy process is not used): all get an ID, each a different one, and Agora answers no 429.

    The starters run at nice 10 (the busier they are the later they would send), so that the simulator, which
    stands for a service on other machines, stamps arrivals on time."""
    publish_pool(r, PREFIX, "web")
    config = write_config(tmp_path, redis_url, agora)  # rate_limit = 10: the simulator's own window
    argv = ["nice", "-n", "10", *RIDPOOL, "pop", "web", "--or-acquire", "-c", str(config)]
    began = time.monotonic()
    procs = [
        subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(STARTERS)
    ]
    outcomes = [p.communicate(timeout=240) for p in procs]
    took = time.monotonic() - began
    failed = [(p.returncode, err[-300:]) for p, (_, err) in zip(procs, outcomes, strict=True) if p.returncode != 0]
    assert not failed, failed
    popped = [json.loads(out) for out, _ in outcomes]
    assert {e["source"] for e in popped} == {"acquired"}
    assert len({e["resourceId"] for e in popped}) == STARTERS
    stats = SimStats(**httpx.get(f"{agora}/_sim/stats", timeout=2).json())
    assert stats.rate_limited == 0 and stats.acquired == STARTERS, (stats, took)
