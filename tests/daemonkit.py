"""Running real daemons in a test: config built as a TOML table would be, fast timings, a stop that waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ridpool.daemon.config import Config, Credentials, parse_config
from ridpool.daemon.service import Daemon, Timing

from tests.conftest import PREFIX
from tests.servers import wait_for

CUSTOMER_ID = "cust-7"
SECRET = "Zq-secret-4f9b1c77e-DO-NOT-LEAK"
APPID = "0123456789abcdef0123456789abcdef"
CREDENTIALS = Credentials(customer_id=CUSTOMER_ID, customer_secret=SECRET)  # type: ignore[arg-type]
FAST = Timing(tick=0.05, heartbeat=0.2, publish=0.5, grace=1.0, backoff_scale=0.01, redis_backoff_cap=0.2)


def web_pool(size: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "appid": APPID,
        "cname": "web-{uuid}",
        "uid": "527841",
        "scene": 1,
        "size": size,
        "max_age": 270,
        **extra,
    }


def rooms_pool(size: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "name": "rooms",
        "appid": APPID,
        "cnames": ["room-1", "room-2", "room-3"],
        "uid_range": [900000, 900099],
        "size": size,
        "max_age": 270,
        **extra,
    }


def make_config(
    redis_url: str,
    hosts: str | list[str],
    *pools: dict[str, Any],
    rate_limit: float = 8,
    timeout: float = 2.0,
    **agora: Any,
) -> Config:
    return parse_config(
        {
            "redis": {"url": redis_url, "key_prefix": PREFIX},
            "agora": {"base_url": hosts, "rate_limit": rate_limit, "timeout": timeout, **agora},
            "pools": list(pools) or [web_pool()],
        }
    )


@contextlib.asynccontextmanager
async def running(
    config: Config,
    *,
    replicas: int = 1,
    timing: Timing = FAST,
    credentials: Credentials = CREDENTIALS,
    name: str = "r",
) -> AsyncIterator[list[Daemon]]:
    """Run `replicas` daemons (same config, replica ids name0, name1, ...) until the block ends, then stop them."""
    stop = asyncio.Event()
    daemons = [Daemon(config, credentials, timing=timing, replica_id=f"{name}{i}") for i in range(replicas)]
    tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
    try:
        yield daemons
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def eventually(
    condition: Callable[[], Awaitable[object] | object], timeout: float = 10.0, what: str = ""
) -> None:
    """Await until `condition` (sync or async) is truthy; fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


def web_config_toml(redis_url: str, sim_url: str, size: int) -> str:
    """A config file's text: one template pool of `size` entries against the simulator."""
    return (
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "{sim_url}"\n'
        'rate_limit = 10\n[[pools]]\nname = "web"\nappid = "0123456789abcdef0123456789abcdef"\n'
        f'cname = "web-{{uuid}}"\nuid = "527841"\nscene = 1\nsize = {size}\n'
    )


def run_until_filled(
    command: list[str], filled: Callable[[], object], *, cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start `ridpool run` as a process (with `env` added to its environment), wait for `filled`, SIGTERM it;
    returns its outcome and how long it took to exit after the signal."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = {**clean, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET, **(env or {})}
    proc = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(filled, timeout=30, what="the daemon to fill its pool")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - started
    finally:
        proc.kill()
    return subprocess.CompletedProcess(command, proc.returncode, out, err), took
