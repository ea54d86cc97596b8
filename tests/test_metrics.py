"""Metrics, health and `status --check` against a running daemon: the real endpoint scraped over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from ridpool import AsyncPoolClient, PoolClient
from ridpool.daemon.config import Config, Credentials, MetricsSettings
from ridpool.daemon.metrics import NAMES, Metrics, Snapshot
from ridpool.keys import pool_keys
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, FAST, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
OBSERVING = dataclasses.replace(FAST, observe=0.05)
# The names the issue lists: the contract an operator's dashboards and alerts are written against.
CONTRACT = {
    "ridpool_pool_ready",
    "ridpool_pool_target",
    "ridpool_pool_in_flight",
    "ridpool_pops_total",
    "ridpool_misses_total",
    "ridpool_expired_unused_total",
    "ridpool_acquires_total",
    "ridpool_agora_errors_total",
    "ridpool_agora_rate_limited_total",
    "ridpool_acquire_duration_seconds",
    "ridpool_budget_wait_seconds",
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=5) as s:
        yield s


def with_metrics(config: Config, port: int, summary: float = 0.0) -> Config:
    return config.model_copy(
        update={
            "metrics": MetricsSettings(port=port),
            "logs": config.logs.model_copy(update={"summary_interval": summary}),
        }
    )


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def healthz(port: int) -> tuple[int, str]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return answer.status_code, answer.text.strip()


async def status_run(redis_url: str, *flags: str) -> tuple[int, str, str]:
    """`ridpool status FLAGS` as a process (the event loop keeps running the daemon meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ridpool.cli",
        "status",
        *flags,
        "--redis-url",
        redis_url,
        "--prefix",
        PREFIX,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ""},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_check(redis_url: str) -> tuple[int, str, str]:
    return await status_run(redis_url, "--check")


@pytest.mark.integration
async def test_a_healthy_daemon_exports_every_contract_metric_and_passes_the_check(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """Scraped while running: every listed name, ready/target per channel only for named pools, pops counted;
    /healthz 200; `status --check` exits 0 with one line."""
    port = free_port()
    config = with_metrics(make_config(redis_url, sim.url, web_pool(3), rooms_pool(1)), port)
    async with running(config, timing=OBSERVING):

        async def filled() -> bool:
            samples = await scrape(port)
            return value(samples, "ridpool_pool_ready", pool="web") == 3 and all(
                value(samples, "ridpool_pool_ready", pool="rooms", cname=c) == 1 for c in ("room-1", "room-2", "room-3")
            )

        await eventually(filled, what="ready 3 for web and 1 per room on /metrics")
        await aclient.pop("web")
        await eventually(lambda: _is(port, "ridpool_pops_total", 1.0, pool="web"), what="the pop on /metrics")
        samples = await scrape(port)
        assert await healthz(port) == (200, "ok")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/nothing", timeout=5)).status_code == 404
        code, out, err = await status_check(redis_url)
    names = {name for name, _ in samples}
    exported = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in names}
    assert exported >= CONTRACT, CONTRACT - exported
    assert value(samples, "ridpool_pool_target", pool="web") == 3
    assert value(samples, "ridpool_pool_target", pool="rooms", cname="room-2") == 1
    assert value(samples, "ridpool_pool_ready", pool="web", cname="") is None  # template pools carry no cname
    assert value(samples, "ridpool_acquires_total", pool="web") is not None
    assert (value(samples, "ridpool_acquire_duration_seconds_count", pool="web") or 0) >= 3
    assert (value(samples, "ridpool_budget_wait_seconds_count", pool="rooms") or 0) >= 3
    assert value(samples, "ridpool_pool_state", pool="web", state="ok") == 1
    assert (code, err) == (0, "") and out.startswith("ok: 2 pools ok, 1 live replicas")


async def _is(port: int, name: str, expected: float, **labels: str) -> bool:
    return value(await scrape(port), name, **labels) == expected


@pytest.mark.integration
async def test_a_pool_in_error_shows_in_metrics_and_fails_the_check_while_health_stays_ok(
    redis_url: str, sim: Simulator
) -> None:
    """A wrong secret (401): state error and errors by kind on /metrics, /healthz still 200 (the daemon reaches
    Redis), `status --check` exits 13 saying which pool and why on one line."""
    port = free_port()
    wrong = Credentials(customer_id=CUSTOMER_ID, customer_secret="wrong-secret-of-16+")  # type: ignore[arg-type]
    config = with_metrics(make_config(redis_url, sim.url, web_pool(2)), port)
    async with running(config, timing=OBSERVING, credentials=wrong):
        await eventually(
            lambda: _is(port, "ridpool_pool_state", 1.0, pool="web", state="error"), what="state error on /metrics"
        )
        samples = await scrape(port)
        health = await healthz(port)
        code, _, err = await status_check(redis_url)
    assert (value(samples, "ridpool_agora_errors_total", pool="web", kind="rejected") or 0) >= 1
    assert health == (200, "ok")
    assert code == 13 and len(err.strip().splitlines()) == 1, err
    assert "pool 'web' is error: rejected: HTTP 401" in err and "Traceback" not in err


@pytest.mark.integration
async def test_redis_down_turns_health_to_503_and_the_check_to_exit_5_until_it_returns(
    redis_url: str, redis_server: RedisServer, sim: Simulator
) -> None:
    """Redis killed: /healthz 503 naming Redis, ridpool_redis_up 0, `status --check` exits 5; back to 200 after."""
    port = free_port()
    config = with_metrics(make_config(redis_url, sim.url, web_pool(1)), port)
    async with running(config, timing=OBSERVING):
        await eventually(lambda: _health_is(port, 200), what="healthy")
        redis_server.stop()
        await eventually(lambda: _health_is(port, 503), what="503 while Redis is down")
        _, reason = await healthz(port)
        samples = await scrape(port)
        code, _, err = await status_check(redis_url)
        redis_server.start()
        await eventually(lambda: _health_is(port, 200), timeout=15, what="200 once Redis is back")
    assert "Redis unreachable" in reason
    assert value(samples, "ridpool_redis_up") == 0
    assert code == 5 and "unavailable" in err and len(err.strip().splitlines()) == 1


async def _health_is(port: int, code: int) -> bool:
    return (await healthz(port))[0] == code


@pytest.mark.integration
async def test_pool_summaries_are_logged_per_pool_at_the_configured_interval(redis_url: str, sim: Simulator) -> None:
    """`[logs] summary_interval`: one `pool.summary` per pool with ready, target, in flight and waste."""
    config = make_config(redis_url, sim.url, web_pool(2), rooms_pool(1))
    config = config.model_copy(update={"logs": config.logs.model_copy(update={"summary_interval": 0.1})})
    with capture_logs() as logs:
        async with running(config, timing=OBSERVING):
            await eventually(
                lambda: sum(e["event"] == "pool.summary" for e in logs) >= 4, what="two rounds of summaries"
            )
    summaries = [e for e in logs if e["event"] == "pool.summary"]
    assert {e["pool"] for e in summaries} == {"web", "rooms"}
    rooms = next(e for e in summaries if e["pool"] == "rooms")
    assert rooms["target"] == 3 and {"ready", "in_flight", "expired_unused", "state"} <= set(rooms)


@pytest.mark.integration
def test_a_port_already_taken_fails_the_start_in_one_line(tmp_path: Path, redis_url: str) -> None:
    """`[metrics] port` busy: `ridpool run` exits 1 naming the address, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(
            f'[redis]\nurl = "{redis_url}"\n[agora]\nbase_url = "http://127.0.0.1:9"\n[metrics]\nport = {port}\n'
            '[[pools]]\nname = "web"\nappid = "0123456789abcdef0123456789abcdef"\ncname = "lobby"\nuid = "1"\n'
        )
        env = {**os.environ, "AGORA_CUSTOMER_ID": CUSTOMER_ID, "AGORA_CUSTOMER_SECRET": SECRET}
        done = subprocess.run(
            [sys.executable, "-m", "ridpool.cli", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    assert done.returncode == 1 and f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_the_grafana_dashboard_names_only_metrics_the_daemon_exports() -> None:
    """Every expression of docs/grafana-dashboard.json names an exported metric, and it uses every listed one."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    used = set()
    for expr in exprs:
        named = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bridpool_[a-z_]+", expr)}
        assert named, f"an expression names no ridpool metric: {expr}"
        assert named <= set(NAMES), f"{expr} names {named - set(NAMES)}"
        used |= named
    assert used >= CONTRACT, CONTRACT - used


@pytest.mark.integration
def test_the_collector_labels_channels_of_named_pools_and_reads_the_planned_target(
    r: redis.Redis, client: PoolClient
) -> None:
    """Stats as the parser reads them from Redis: `cname` only on named pools' ready/target; the plan's `target`
    (the whole pool) shared across channels, else size per channel; every error kind, zero until it happens."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2", "room-3"), size=2)
    publish_pool(r, PREFIX, "web", size=2)
    fill(r, PREFIX, "rooms", 1, cname="room-2", named=True)
    fill(r, PREFIX, "web", 1)
    r.hset(pool_keys(PREFIX, "rooms").stats, mapping={"target": 9, "errors:rejected": 5, "state": "error"})
    metrics = Metrics()
    metrics.snapshot = Snapshot(tuple(client.stats(p) for p in ("rooms", "web", "gone")), reached=True)
    samples: Samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.registry.collect() for s in f.samples
    }
    assert value(samples, "ridpool_pool_target", pool="rooms", cname="room-2") == 3
    assert value(samples, "ridpool_pool_ready", pool="rooms", cname="room-2") == 1
    assert value(samples, "ridpool_pool_ready", pool="rooms", cname="room-1") == 0
    assert value(samples, "ridpool_pool_target", pool="web") == 2
    assert value(samples, "ridpool_pool_ready", pool="web") == 1
    assert value(samples, "ridpool_agora_errors_total", pool="rooms", kind="rejected") == 5
    assert value(samples, "ridpool_agora_errors_total", pool="web", kind="transient") == 0
    assert value(samples, "ridpool_pool_state", pool="rooms", state="error") == 1
    assert value(samples, "ridpool_redis_up") == 1
    assert not any(dict(labels).get("pool") == "gone" for _, labels in samples)


@pytest.mark.integration
def test_the_check_names_every_reason_on_one_line_for_the_configs_pools(tmp_path: Path, redis_url: str) -> None:
    """`status --check -c FILE` with no daemon ever run: exit 13, one line naming the unknown pool and no replica."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "http://127.0.0.1:9"\n'
        '[[pools]]\nname = "lobby"\nappid = "0123456789abcdef0123456789abcdef"\ncname = "lobby"\nuid = "1"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "ridpool.cli", "status", "--check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 13 and done.stdout == ""
    assert done.stderr == (
        f"ridpool status: pool 'lobby' unknown (no daemon published it) (key prefix {PREFIX!r}); no live replica\n"
    )
