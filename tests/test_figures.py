"""Every figure a pool shows (`status --json`, `stats()`, /metrics, `pool.summary`) is one figure: computed in
pool/stats.py and equal to what Redis holds, for template, named and announced pools and during a warm-up.

Against a running daemon, the simulator over HTTP and a real redis-server; the truth is read from Redis with
plain commands (the queues found by SCAN, counted with ZCOUNT), not from ridpool's own readers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import redis
from ridpool import AsyncPoolClient, stats
from ridpool.daemon.config import Config, MetricsSettings
from ridpool.keys import pool_keys
from ridpool.stats import PoolStats
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, FAST, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.poolkit import server_ms
from tests.servers import free_port
from tests.test_metrics import Samples, scrape, status_run

OBSERVING = dataclasses.replace(FAST, observe=0.05)
FIGURES = ("ready", "target", "pops", "expired_unused")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=5) as s:
        yield s


def classes_pool() -> dict[str, object]:
    return {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "max_age": 270}


def observed(config: Config, port: int) -> Config:
    return config.model_copy(
        update={
            "metrics": MetricsSettings(port=port),
            "logs": config.logs.model_copy(update={"summary_interval": 0.05}),
        }
    )


def truth(r: redis.Redis, pool: str) -> dict[str, int]:
    """The pool's figures from Redis itself: its queues found by SCAN and counted live (expiry after now)."""
    keys = pool_keys(PREFIX, pool)
    now = server_ms(r)
    queues = [k for k in r.scan_iter(match=f"{keys.tag}:q*", count=1000) if not k.endswith(b":ready")]
    ready = sum(int(r.zcount(q, f"({now}", "+inf")) for q in queues)
    raw = {k.decode(): int(v) for k, v in r.hgetall(keys.stats).items() if v.isdigit()}
    return {
        "ready": ready,
        "target": raw.get("target", -1),
        "pops": raw.get("pops", 0),
        "expired_unused": raw.get("added", 0) - raw.get("pops", 0) - raw.get("dropped", 0) - ready,
    }


def of_metrics(samples: Samples, pool: str) -> dict[str, object]:
    def total(name: str) -> int:
        return round(sum(v for (n, labels), v in samples.items() if n == name and ("pool", pool) in labels))

    return {
        "ready": total("ridpool_pool_ready"),
        "target": total("ridpool_pool_target"),
        "pops": total("ridpool_pops_total"),
        "expired_unused": total("ridpool_expired_unused_total"),
    }


def of_stats(s: PoolStats) -> dict[str, object]:
    return {"ready": s.size, "target": s.aim, "pops": s.counters["pops"], "expired_unused": s.counters["expired"]}


def of_json(shown: dict[str, object]) -> dict[str, int]:
    return {
        "ready": shown["size"],
        "target": shown["target"],
        "pops": shown["pops"],
        "expired_unused": shown["expired"],
    }  # type: ignore[dict-item]


def of_summary(event: dict[str, object]) -> dict[str, object]:
    return {name: event[name] for name in FIGURES}


async def status_json(redis_url: str) -> dict[str, dict[str, object]]:
    """`ridpool status --json` as a process: each pool's object by name."""
    code, out, err = await status_run(redis_url, "--json")
    assert code == 0, err
    return {p["pool"]: p for p in json.loads(out)["pools"]}


async def views_agree(
    r: redis.Redis, redis_url: str, port: int, aclient: AsyncPoolClient, logs: list[dict[str, object]], pools: list[str]
) -> dict[str, dict[str, int]]:
    """Wait until /metrics and the latest `pool.summary` show what Redis holds, then check `stats()` and `status
    --json` against the same truth; returns it by pool."""

    async def metrics_and_logs_agree() -> bool:
        samples = await scrape(port)
        for pool in pools:
            summaries = [e for e in logs if e["event"] == "pool.summary" and e["pool"] == pool]
            want = truth(r, pool)
            if of_metrics(samples, pool) != want or not summaries or of_summary(summaries[-1]) != want:
                return False
        return True

    await eventually(metrics_and_logs_agree, what="/metrics and pool.summary showing what Redis holds")
    shown = await status_json(redis_url)
    out = {}
    for pool in pools:
        want = truth(r, pool)
        assert of_stats(await aclient.stats(pool)) == want, pool
        assert of_json(shown[pool]) == want, pool
        out[pool] = want
    return out


@pytest.mark.integration
async def test_template_named_and_announced_pools_show_what_redis_holds_everywhere(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Filled, then after pops (an announced channel used up): ready, target, pops and expired unused agree in
    /metrics, pool.summary, stats() and status --json, equal to Redis; nothing counted expired that did not."""
    port = free_port()
    config = observed(make_config(redis_url, sim.url, web_pool(3), rooms_pool(1), classes_pool(), rate_limit=10), port)
    pools = ["web", "rooms", "classes"]
    with capture_logs() as logs:
        async with running(config, timing=OBSERVING):
            await eventually(lambda: r.exists(pool_keys(PREFIX, "classes").meta), what="the pools published")
            await aclient.announce("classes", "class-1", at=2, count=2)
            await aclient.announce("classes", "class-2", at=2, count=1)
            # Compare only once nothing is moving: an add landing between two reads would show two truths.
            await eventually(lambda: all(truth(r, p)["ready"] == 3 for p in pools), what="every pool full")
            full = await views_agree(r, redis_url, port, aclient, logs, pools)
            await aclient.pop("web")
            await aclient.pop("rooms", cname="room-2")
            await aclient.pop("classes", cname="class-1")
            await aclient.pop("classes", cname="class-1")
            await eventually(
                lambda: truth(r, "web")["ready"] == 3 and truth(r, "rooms")["ready"] == 3,
                what="the refills after the pops",
            )
            after = await views_agree(r, redis_url, port, aclient, logs, pools)
    assert full == {
        "web": {"ready": 3, "target": 3, "pops": 0, "expired_unused": 0},
        "rooms": {"ready": 3, "target": 3, "pops": 0, "expired_unused": 0},
        "classes": {"ready": 3, "target": 3, "pops": 0, "expired_unused": 0},
    }
    assert after["web"] == {"ready": 3, "target": 3, "pops": 1, "expired_unused": 0}
    assert after["rooms"] == {"ready": 3, "target": 3, "pops": 1, "expired_unused": 0}
    assert after["classes"]["ready"] == 1 and after["classes"]["pops"] == 2
    assert after["classes"]["expired_unused"] == 0


def _shift_to(r: redis.Redis, seconds_ahead: float) -> tuple[float, int]:
    """A warmup_shift that puts the next `* * * * *` instant `seconds_ahead` from now; and that instant (server ms)."""
    instant = server_ms(r) + round(seconds_ahead * 1000)
    return ((60_000 - instant % 60_000) % 60_000) / 1000, instant


@pytest.mark.integration
async def test_during_a_warmup_every_view_shows_the_planned_target_not_the_standing_size(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Standing 2 + warm-up 6 on a template pool and on 3 named channels: at the instant every view's target is
    the plan's (8 and 24), as Redis holds it, and ready is what the queues hold."""
    shift, instant = _shift_to(r, 6.0)
    warmup = [{"cron": "* * * * *", "size": 6, "duration": 6}]
    port = free_port()
    config = observed(
        make_config(
            redis_url, sim.url, web_pool(2, max_age=60, warmups=warmup), rooms_pool(2, warmups=warmup), rate_limit=10
        ),
        port,
    )
    with capture_logs() as logs:
        async with running(config, timing=dataclasses.replace(OBSERVING, warmup_shift=shift)):
            await eventually(lambda: server_ms(r) >= instant, timeout=12, what="the instant")
            await eventually(
                lambda: truth(r, "web")["ready"] == 8 and truth(r, "rooms")["ready"] == 24,
                timeout=5,
                what="the warm-up filled",
            )
            during = await views_agree(r, redis_url, port, aclient, logs, ["web", "rooms"])
    assert during["web"]["target"] == 8 and during["rooms"]["target"] == 24


def test_the_last_hour_counts_the_minute_under_way() -> None:
    """Pure: the last hour is the history's whole steps plus what the counters moved since the last sample
    (a pool sampled 30 s ago that acquired 5 since shows them), a reset counter counting from zero."""
    since = {"added": 10, "pops": 4, "misses": 1, "expired": 0}
    now = {"added": 15, "pops": 6, "misses": 1, "expired": 2}
    hour = stats.last_hour([b"3 1 0 0", None, b"2 2 1 1"], since, now)
    assert (hour.acquired, hour.popped, hour.misses, hour.expired) == (5 + 5, 2 + 3, 1, 2 + 1)
    reset = stats.last_hour([], since, {"added": 3, "pops": 0, "misses": 0, "expired": 0})
    assert reset.acquired == 3
    assert stats.last_hour([], None, now).acquired == 0  # never sampled: no step to count from
