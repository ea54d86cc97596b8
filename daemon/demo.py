"""`ridpool demo`: Redis, the Agora simulator and the daemon in one process tree, pools filling and pops, live.

Nothing here is special to the demo but the wiring: the daemon, the simulator and the status table are the real
ones, with the demo's config (`demo.toml`, shipped inside `ridpool.daemon` so that the demo runs from any install
with the daemon extra) pointed at a Redis started on a free port and at the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import tomllib
from importlib import resources

from rich.console import Console
from ridpool import PoolClient, PoolEmpty, status
from ridpool.daemon import log
from ridpool.daemon.config import Credentials, parse_config
from ridpool.daemon.localredis import LocalRedis
from ridpool.daemon.service import Daemon, Timing
from ridpool.testing import Faults, Simulator

DEMO_CONFIG = resources.files("ridpool.daemon").joinpath("demo.toml")
CUSTOMER_ID, SECRET = "demo-customer", "demo-secret-not-a-real-one"


def run_demo(*, redis_url: str | None, duration: float | None, console: Console | None = None) -> int:
    console = console or Console(width=None if Console().is_terminal else 130)
    local = None if redis_url else LocalRedis().start()
    url = redis_url or (local.url if local else "")
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, faults=Faults(latency=0.15, jitter=0.1)).start()
    try:
        data = tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))
        data["redis"]["url"] = url
        data["agora"]["base_url"] = sim.url
        config = parse_config(data, source=DEMO_CONFIG.name)
        console.print(
            f"[bold]ridpool demo[/]: Redis {url}, key prefix {config.redis.key_prefix!r}, Agora simulator "
            f"{sim.url}, config {DEMO_CONFIG.name}",
            markup=True,
            highlight=False,
        )
        console.print(
            "pools fill within the shared budget, then a starter pops an ID every 2 s and the simulator "
            "checks it as Agora's start would. Ctrl-C to stop.\n"
        )
        log.configure(secrets=[SECRET], json=False, level="warning")
        credentials = Credentials(customer_id=CUSTOMER_ID, customer_secret=SECRET)  # type: ignore[arg-type]
        client = PoolClient.from_url(config.redis.url, prefix=config.redis.key_prefix)
        asyncio.run(_live(client, Daemon(config, credentials, timing=Timing()), sim, duration, console))
    finally:
        sim.stop()
        if local:
            local.stop()
    console.print("demo stopped")
    return 0


async def _live(client: PoolClient, daemon: Daemon, sim: Simulator, duration: float | None, console: Console) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(daemon.run(stop))
    started = time.monotonic()
    tick = 0
    try:
        while not stop.is_set():
            if duration is not None and time.monotonic() - started >= duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            tick += 1
            if tick % 2 == 0 and tick >= 6:
                _pop_and_start(client, sim, "web" if tick % 4 == 0 else "rooms", console)
            if tick % 4 == 0:
                state = await asyncio.to_thread(status.gather, client)
                console.print(status.render(state), markup=False, highlight=False)
                s = sim.stats()
                console.print(
                    f"simulator: {s.acquired} IDs issued, {s.started} started, {s.rate_limited} "
                    f"rate-limited, busiest second {s.max_in_window} requests\n"
                )
    finally:
        stop.set()
        await runner
        client.close()


def _pop_and_start(client: PoolClient, sim: Simulator, pool: str, console: Console) -> None:
    cname = "room-2" if pool == "rooms" else None
    try:
        entry = client.pop(pool, cname=cname, min_ttl=5)
    except PoolEmpty:
        console.print(f"pop {pool}: empty (still filling)")
        return
    verdict = sim.check(entry.resource_id, appid=entry.appid, cname=entry.cname, uid=entry.uid) or "OK"
    console.print(
        f"pop {pool}: cname={entry.cname} uid={entry.uid} resourceId={entry.resource_id[:16]}... "
        f"expires in {entry.expires_in:.0f} s -> simulator start: {verdict}"
    )
