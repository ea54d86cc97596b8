"""`ridpool plan` and forecast-only learned demand: the plan in view, from the config alone and from a real
redis-server (announcements, demand history); the daemon showing a forecast it does not act on."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from ridpool import AsyncPoolClient, PoolClient, cli, status
from ridpool.daemon import demand, planchart, planner, planview
from ridpool.daemon.config import Config, load_config, overlap_warnings, parse_config
from ridpool.daemon.metrics import Metrics, Snapshot
from ridpool.keys import pool_keys
from ridpool.meta import PoolMeta, publish
from ridpool.stats import COUNTERS, ChannelStats, PoolStats
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, FAST, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import APPID, server_ms
from tests.servers import free_port

RIDPOOL = Path(sys.executable).with_name("ridpool")
ROOT = Path(__file__).parent.parent
NOW = "2026-11-26T06:00:00+00:00"
INSTANT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
MINUTE = 60_000


def toml(redis_url: str, *pools: str, rate: float = 8) -> str:
    return (
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "https://api.sd-rtn.com"\n'
        f"rate_limit = {rate}\n" + "".join(pools)
    )


def web(size: int = 20, *warmups: tuple[str, int], max_age: int = 270, extra: str = "") -> str:
    tables = "".join(f'[[pools.warmups]]\ncron = "{cron}"\nsize = {n}\n' for cron, n in warmups)
    return (
        f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nuid = "527841"\nscene = 1\n'
        f"size = {size}\nmax_age = {max_age}\n{extra}{tables}"
    )


def rooms(size: int, *warmups: tuple[str, int]) -> str:
    tables = "".join(f'[[pools.warmups]]\ncron = "{cron}"\nsize = {n}\n' for cron, n in warmups)
    return (
        f'[[pools]]\nname = "rooms"\nappid = "{APPID}"\ncnames = ["room-1", "room-2", "room-3"]\n'
        f"uid_range = [900000, 999999]\nsize = {size}\n{tables}"
    )


NO_REDIS = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, *args: str, now: str | None = NOW
) -> tuple[int, str, str]:
    """`ridpool plan -c FILE ARGS` in this process (the CLI's main), with the clock at `now`."""
    path = tmp_path / "ridpool.toml"
    path.write_text(text)
    code = cli.main(["plan", "-c", str(path), *args, *(["--now", now] if now else [])])
    out, err = capsys.readouterr()
    return code, out, err


def web_config(size: int, *warmups: tuple[str, int]) -> Config:
    """The config `web(size, *warmups)` writes, parsed in code (8/s, no Redis)."""
    table = {"name": "web", "appid": APPID, "cname": "web-{uuid}", "uid": "5", "scene": 1, "size": size}
    table["warmups"] = [{"cron": cron, "size": n} for cron, n in warmups]
    return parse_config({"agora": {"base_url": "https://api.sd-rtn.com", "rate_limit": 8}, "pools": [table]})


def at(ms: str) -> int:
    return round(datetime.fromisoformat(ms.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.parametrize(
    ("pools", "rate", "pool", "size", "burst"),
    [
        (web(20, ("0 9 * * *", 200)), 8, "web", 20, 200),
        (web(0, ("0 9 * * *", 200), max_age=60), 10, "web", 0, 200),  # a short life: acquired inside 60 s
        (web(5, ("0 9 * * *", 2000)), 10, "web", 5, 2000),  # near the largest feasible size at 10/s
        (rooms(3, ("0 9 * * *", 200)), 8, "rooms", 9, 600),  # 200 per channel, 3 channels
    ],
)
def test_a_warmup_is_planned_ready_at_its_instant_within_max_age_and_the_budget(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pools: str, rate: float, pool: str, size: int, burst: int
) -> None:
    """--json, clock injected: the instant's minute holds size + the burst, the warm-up's acquires before it sum
    to the burst, none in a minute wholly more than max_age before it, no minute over the budget, nothing at
    risk; without Redis the plan says it used the config alone."""
    code, out, err = plan(capsys, tmp_path, toml(NO_REDIS, pools, rate=rate), "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["redis"]["read"] is False and "planned from the config alone" in found["redis"]["note"]
    assert "unavailable" in err and "planned from the config alone" in err
    minutes = found["pools"][pool]["minutes"]
    assert len(minutes) == 24 * 60 and minutes[0]["at"] == "2026-11-26T06:00:00Z"
    instant = next(m for m in minutes if m["at"] == "2026-11-26T09:00:00Z")
    assert instant["target"] >= size + burst and any(r.startswith("warmup 0 9 * * *") for r in instant["reasons"])
    max_age = found["pools"][pool]["max_age"] * 1000
    ramp = [
        (at(m["at"]), n)
        for m in minutes
        for label, n in m["acquires_by"].items()
        if label.startswith("warmup") and not label.endswith("(renewal)") and n
    ]
    before = INSTANT.timestamp() * 1000
    assert sum(n for t, n in ramp if t < before) >= burst
    assert all(t + MINUTE > before - max_age for t, _ in ramp), ramp  # every minute with acquires reaches into it
    assert all(t < before for t, _ in ramp)
    budget = found["budget"]["sustained_per_minute"]
    assert all(m["acquires"] <= budget for m in found["account"]["minutes"])
    assert all(0 < m["acquires"] <= budget for m in minutes if m["acquires"] > 10)
    assert found["at_risk"] == [] and found["at_risk_count"] == 0


def test_a_colliding_pair_of_warmups_is_at_risk_with_the_shortfall_check_config_warns_about(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """1,800 at 09:00 and 1,800 at 09:02, each feasible alone at 8/s: the earlier one must start before its entries
    could live (the later one's ramp comes first); the later one cannot begin acquiring until the earlier one's
    1,800 starts are done (09:03:09), too late. at_risk names both, each with its shortfall (the figures
    check-config's warnings give) and the earlier one as pushed by the later; acquires still never exceed the
    budget, and what it cannot fit shows as behind."""
    text = toml(NO_REDIS, web(0, ("0 9 * * *", 1800), ("2 9 * * *", 1800)))
    code, out, _ = plan(capsys, tmp_path, text, "--json")
    assert code == 0
    found = json.loads(out)
    first, second = found["at_risk"]
    assert first["pool"] == "web" and first["at"] == "2026-11-26T09:00:00Z"
    assert first["reason"] == "warmup 0 9 * * * at 2026-11-26T09:00:00+00:00"
    assert first["pushed_by"] == ["warmup 2 9 * * * at 2026-11-26T09:02:00+00:00"]
    assert second["at"] == "2026-11-26T09:02:00Z" and second["pushed_by"] == []
    config = web_config(0, ("0 9 * * *", 1800), ("2 9 * * *", 1800))
    warnings = overlap_warnings(config, INSTANT.replace(hour=6))
    assert len(warnings) == 2
    for risk, warning in zip((first, second), warnings, strict=True):
        assert at(risk["start_needed"]) < at(risk["earliest_start"])
        assert f"about {risk['shortfall']} entries short" in warning and risk["shortfall"] > 0
    budget = found["budget"]["sustained_per_minute"]
    assert all(m["acquires"] <= budget for m in found["account"]["minutes"])
    minutes = {m["at"]: m for m in found["pools"]["web"]["minutes"]}
    assert minutes["2026-11-26T08:59:00Z"]["behind"] > 0
    assert any("behind" in r for r in minutes["2026-11-26T08:59:00Z"]["reasons"])


def test_the_table_is_compact_and_says_what_raises_the_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """24 hours in a few lines: runs of alike minutes, the warm-up's minutes, the account's busiest minute, at risk."""
    code, out, err = plan(capsys, tmp_path, toml(NO_REDIS, web(20, ("0 9 * * *", 200))))
    assert code == 0 and "planned from the config alone" in err
    lines = out.splitlines()
    assert len(lines) < 20, out
    assert lines[0].startswith("plan from 2026-11-26T06:00:00Z to 2026-11-27T06:00:00Z (24 h, UTC)")
    assert any(line.split()[:3] == ["2026-11-26", "06:00", "08:59"] and line.endswith("size 20") for line in lines)
    assert any("warmup 0 9 * * * at 2026-11-26T09:00:00+00:00 +200; size 20" in line for line in lines)
    assert lines[-1] == "at risk: none"
    assert any(line.startswith("account: ") and "busiest minute 2026-11-26 08:59" in line for line in lines)


def test_the_chart_is_drawn_for_a_person_to_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--chart FILE writes a PNG beside the JSON: config/plan-example.toml as the README runs it, whose picture
    (docs/plan-example.png) a person looked at: two pools, the whole day and a zoom on the bursts."""
    monkeypatch.setenv("RIDPOOL_REDIS_URL", NO_REDIS)
    chart = tmp_path / "plan.png"
    code = cli.main(
        ["plan", "-c", str(ROOT / "config/plan-example.toml"), "--now", NOW, "--chart", str(chart), "--json"]
    )
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["pools"].keys() == {"web", "rooms"}
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1500, 870)
    assert (ROOT / "docs/plan-example.png").read_bytes()[:8] == data[:8]


def test_the_chart_zooms_in_on_the_burst_at_risk(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The right column shows the episode whose burst is at risk, not the whole day."""
    text = toml(NO_REDIS, web(0, ("0 9 * * *", 1800), ("2 9 * * *", 1800), ("0 15 * * *", 100)))
    path = tmp_path / "ridpool.toml"
    path.write_text(text)
    view = planview.build(planview.gather(load_config(path), hours=24, now_ms=at(NOW)))
    lo, hi = planchart.zoom(view)
    assert view.minutes[lo] <= view.at_risk[0].at_ms <= view.minutes[hi] and hi - lo < 40


def test_without_matplotlib_chart_says_what_to_install_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib is not in the daemon extra: --chart without it names the install, exit 2, before planning."""
    monkeypatch.setattr(planchart, "available", lambda: False)
    code, out, err = plan(capsys, tmp_path, toml(NO_REDIS, web()), "--chart", str(tmp_path / "x.png"))
    assert code == 2 and out == ""
    assert err == f"ridpool plan: --chart needs matplotlib, which is not installed: {planchart.CHART_EXTRA}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hours", "0"], "--hours must be from 1 to 168, got '0'"),
        (["--hours", "200"], "--hours must be from 1 to 168, got '200'"),
        (["--now", "2026-11-26T06:00:00"], "--now needs a UTC offset"),
        (["--now", "tomorrow"], "--now must be ISO-8601 with an offset, got 'tomorrow'"),
        (["--chart", "/nonexistent-dir/plan.png"], "--chart: cannot write /nonexistent-dir/plan.png"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """As an operator runs it: a clear message naming the argument, exit 2, no traceback."""
    path = tmp_path / "ridpool.toml"
    path.write_text(toml(NO_REDIS, web()))
    done = subprocess.run(
        [str(RIDPOOL), "plan", "-c", str(path), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    """plan validates the whole file first, as check-config does."""
    path = tmp_path / "ridpool.toml"
    path.write_text(toml(NO_REDIS, web(extra='auto_size = "sometimes"\n')))
    done = subprocess.run(
        [str(RIDPOOL), "plan", "-c", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and 'pools[0].auto_size: must be true, false or "forecast"' in done.stderr


# -- with Redis --------------------------------------------------------------------------------------------


def classes(max_age: int = 270) -> str:
    return f'[[pools]]\nname = "classes"\nappid = "{APPID}"\nannounced = true\nuid = "527841"\nmax_age = {max_age}\n'


@pytest.mark.integration
def test_announcements_are_read_from_redis_and_planned(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, r: redis.Redis, client: PoolClient
) -> None:
    """Announced channels (two at +10 min, one at +20 min) are read through ridpool_announcements: ready by their
    instant, acquired just before it; the plan runs on Redis's clock and says it read Redis."""
    publish(r, pool_keys(PREFIX, "classes"), PoolMeta("classes", APPID, (), 0, 270.0, announced=True))
    now = server_ms(r)
    soon = now // MINUTE * MINUTE + 10 * MINUTE
    client.announce("classes", "class-1", at=datetime.fromtimestamp(soon / 1000, UTC), count=3)
    client.announce("classes", "class-2", at=datetime.fromtimestamp(soon / 1000, UTC), count=2)
    client.announce("classes", "class-3", at=datetime.fromtimestamp((soon + 10 * MINUTE) / 1000, UTC))
    code, out, err = plan(capsys, tmp_path, toml(redis_url, web(2), classes()), "--json", "--hours", "1", now=None)
    assert code == 0 and err == "", err
    found = json.loads(out)
    assert found["redis"] == {"read": True, "note": ""}
    assert abs(at(found["now"]) - now) < 5_000  # Redis's clock, not this host's (the same host here)
    minutes = {at(m["at"]): m for m in found["pools"]["classes"]["minutes"]}
    ready = minutes[soon - MINUTE]  # held ready by the end of the minute before the instant
    assert ready["target"] == 5 and ready["reasons"] == ["announced: 2 channels +5"]
    assert sum(m["acquires"] for t, m in minutes.items() if t < soon) == 5
    assert minutes[soon + 10 * MINUTE - MINUTE]["reasons"][0].startswith("announced: ")
    assert sum(m["acquires"] for t, m in minutes.items() if soon <= t < soon + 10 * MINUTE) >= 1


@pytest.mark.integration
def test_learned_demand_and_its_forecast_are_read_from_the_history(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    """Two weeks of 40 starts at one minute: a pool with auto_size = true plans max_size before it; the same pool
    with auto_size = "forecast" keeps its target at size and shows what learned demand would add."""
    now = server_ms(r)
    minute = now // MINUTE + 30
    for pool in ("web", "rooms"):
        for weeks in (1, 2):
            r.hset(pool_keys(PREFIX, pool).history, str(minute - weeks * demand.WEEK), "40 40 0 0")
    acting = web(2, extra="auto_size = true\nmax_size = 30\n")
    shown = rooms(1).replace("size = 1\n", 'size = 1\nauto_size = "forecast"\nmax_size = 11\n')
    code, out, err = plan(capsys, tmp_path, toml(redis_url, acting, shown), "--json", "--hours", "1", now=None)
    assert code == 0 and err == "", err
    found = json.loads(out)
    before = {at(m["at"]): m for m in found["pools"]["web"]["minutes"]}[(minute - 1) * MINUTE]
    assert before["target"] == 30 and before["reasons"][0] == (
        "learned weekly: 40+ starts at this minute 2 weeks running +28"
    )
    rows = {at(m["at"]): m for m in found["pools"]["rooms"]["minutes"]}
    assert {m["target"] for m in rows.values()} == {3}  # not acted on
    forecast = rows[(minute - 1) * MINUTE]
    assert forecast["forecast"] == 30  # 40 starts over 3 channels, 10 each within max_size 11: 30
    assert (
        forecast["reasons"][0]
        == "forecast (not acted on): learned weekly: 40+ starts at this minute 2 weeks running +30"
    )
    assert "forecast" not in before


@pytest.mark.integration
def test_redis_refusing_the_read_is_said_and_the_config_alone_planned(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    """A damaged history key (wrong type): the plan says what Redis said and plans without it."""
    r.set(pool_keys(PREFIX, "web").history, "not a hash")
    text = toml(redis_url, web(2, extra="auto_size = true\nmax_size = 30\n"))
    code, out, err = plan(capsys, tmp_path, text, "--json", "--hours", "1")
    assert code == 0
    note = json.loads(out)["redis"]["note"]
    assert "wrong type" in note and "planned from the config alone (without learned demand)" in note
    assert note in err


@pytest.mark.integration
def test_thousands_of_announcements_plan_in_seconds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, r: redis.Redis, client: PoolClient
) -> None:
    """3,000 announcements over the next hours are paged through and planned; none is lost."""
    publish(r, pool_keys(PREFIX, "classes"), PoolMeta("classes", APPID, (), 0, 270.0, announced=True))
    now = server_ms(r)
    with r.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.fcall("ridpool_announce", 5, *_announce_keys(), f"class-{i}", now + (20 + i % 120) * MINUTE, 1)
        pipe.execute()
    code, out, _ = plan(capsys, tmp_path, toml(redis_url, classes()), "--json", "--hours", "3", now=None)
    assert code == 0
    minutes = json.loads(out)["pools"]["classes"]["minutes"]
    assert sum(m["acquires"] for m in minutes) >= 3000


def _announce_keys() -> list[str]:
    k = pool_keys(PREFIX, "classes")
    return [k.meta, k.announced, k.announced_at, k.announced_left, k.changes]


# -- forecast-only learned demand in the daemon -------------------------------------------------------------


@pytest.fixture
def sim() -> Any:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=3) as s:
        yield s


@pytest.mark.integration
async def test_a_forecast_only_pool_shows_its_forecast_without_acting_on_it(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """auto_size = "forecast" with recorded history (1 s steps): the stats hash (status) and the metric show what
    learned demand would add, logged as demand.forecast, while the target stays at size before and at the step."""
    keys = pool_keys(PREFIX, "web")
    step = server_ms(r) // 1000 + 4
    week = 7 * 86_400
    r.hset(keys.history, mapping={str(step - week): "30 30 0 0", str(step - 2 * week): "30 30 0 0"})
    pool = web_pool(2, max_age=20, auto_size="forecast", max_size=10)
    timing = dataclasses.replace(FAST, history_step=1.0, sample=60.0)
    targets: list[int] = []

    async def forecast_shown() -> bool:
        stats = await aclient.stats("web")
        if stats.target_now is not None:
            targets.append(stats.target_now)
        return stats.extra.get("forecast") == "8"

    with capture_logs() as logs:
        async with running(make_config(redis_url, sim.url, pool, rate_limit=10), timing=timing):
            await eventually(forecast_shown, timeout=10, what="the forecast in the stats hash")
            shown = await aclient.stats("web")
            await eventually(lambda: server_ms(r) >= (step + 1) * 1000, timeout=10, what="the step to pass")
            after = await aclient.stats("web")
    assert shown.extra["forecast_reason"].startswith("learned weekly: 30+ starts")
    assert shown.extra["forecast_at"] == datetime.fromtimestamp(step, UTC).isoformat(timespec="seconds")
    assert set(targets) == {2} and after.target_now == 2 and after.size <= 2
    assert [e["event"] for e in logs if e["event"].startswith("demand.")] == ["demand.forecast"]
    forecast = status.as_json(status.Status([shown], []))["pools"][0]["forecast"]
    assert forecast == {"entries": 8, "at": shown.extra["forecast_at"], "reason": shown.extra["forecast_reason"]}
    line = status.plan_line(shown)
    assert line.endswith(f"; learned demand would add 8 by {forecast['at']} ({forecast['reason']})")
    assert "learned demand" not in status.plan_line(dataclasses.replace(shown, extra={**shown.extra, "forecast": "0"}))
    metrics = Metrics()
    metrics.snapshot = Snapshot((shown,), reached=True)
    samples = {(s.name, s.labels.get("pool")): s.value for f in metrics.registry.collect() for s in f.samples}
    assert samples[("ridpool_pool_forecast", "web")] == 8


def _stats(pool: str, mode: str, channels: tuple[str | None, ...], **extra: str) -> PoolStats:
    """A pool's stats with the stats hash's other fields (`extra`), as stats.build makes them."""
    return PoolStats(
        pool=pool,
        known=True,
        mode=mode,
        appid="0" * 32,
        target=2,
        max_age=270,
        channels=tuple(ChannelStats(c, 1, 3.0) for c in channels),
        in_flight=1,
        counters=dict.fromkeys((*COUNTERS, "expired"), 4),
        state="ok",
        last_error="",
        published_at_ms=1,
        extra=extra,
    )


def test_the_forecast_metric_is_exported_only_for_pools_that_learn() -> None:
    """ridpool_pool_forecast reads the field the daemon writes; a pool without it has no series."""
    learning = _stats("web", "template", (None,), forecast="12")
    plain = _stats("rooms", "named", ("room-1",))
    metrics = Metrics()
    metrics.snapshot = Snapshot((learning, plain), reached=True)
    samples = {(s.name, s.labels.get("pool")): s.value for f in metrics.registry.collect() for s in f.samples}
    assert samples[("ridpool_pool_forecast", "web")] == 12 and ("ridpool_pool_forecast", "rooms") not in samples


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (None, [(11, 20), (12, 10)]),  # the daemon's view: the room shared over its whole horizon
        (1, [(11, 20), (12, 20), (13, 20), (14, 20)]),  # each minute alone
        (2, [(11, 20), (12, 10), (13, 20), (14, 10)]),  # within any two minutes
    ],
)
def test_learned_demands_share_the_room_within_a_window(window: int | None, expected: list[tuple[int, int]]) -> None:
    """ridpool plan looks a day ahead: max_size - size is shared within the daemon's horizon, not the whole day."""
    history = {m - k * demand.WEEK: 20 for m in (11, 12, 13, 14) for k in (1, 2)}
    found = demand.learned_demands("a", [None], history, now_minute=10, horizon=4, room=30, window=window)
    assert [(d.at_ms // MINUTE, d.count) for d in found] == [(m, n) for m, n in expected if window or m < 13]


def test_the_plan_view_reuses_the_planner_targets_minute_by_minute() -> None:
    """At every minute's end the view's target is what planner.plan gives for the same demands then (and the start
    phases the daemon remembers from before their instants)."""
    config = web_config(4, ("0 9 * * *", 900), ("3 9 * * *", 700))
    inputs = planview.Inputs(config, at(NOW), 4 * 60)
    view = planview.build(inputs)
    acted, _ = planview.demands(inputs)
    rate = planner.available_rate(config.sustained_rate, [d for d in acted if d.until_ms is None], {"web": 270_000})
    phases = planner.start_phases(acted, config.channels, config.sustained_rate)
    for row in view.rows["web"]:
        t = row.at_ms + MINUTE - 1
        begun = [(at, end) for (_, at), end in phases.items() if at <= t < end + 270_000]  # what the daemon keeps
        plan = planner.plan(
            acted, now_ms=t, rate=rate, max_age_ms={"web": 270_000}, start_rate=config.sustained_rate, begun=begun
        )
        want = plan[("web", None)].count
        assert row.target == want, planview.iso(row.at_ms)
    assert math.isclose(view.rate, rate)
