"""Burst planning as pure functions: demands to targets, earliest deadline first, crontab instants, config rules."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from ridpool.daemon import demand, planner, warmups
from ridpool.daemon.config import overlap_warnings, parse_config
from ridpool.daemon.planner import Demand, Span
from ridpool.errors import ConfigError

S = 1000  # ms
AGE = {"a": 270 * S, "b": 270 * S}


def size(pool: str, n: int, cname: str | None = None) -> Demand:
    return Demand(pool, cname, n, 0, None, "size")


def burst(pool: str, n: int, at: int, duration: int = 300 * S, cname: str | None = None) -> Demand:
    return Demand(pool, cname, n, at, at + duration, f"warmup {pool}")


@pytest.mark.parametrize(
    ("now", "want"),
    [
        (0, 20),  # long before the span: the standing size only
        (100 * S - 2 * S - 10 * S - planner.LOOK_MS - 1, 20),  # just before the ramp (less its look-ahead) begins
        (100 * S - 2 * S - 5 * S - planner.LOOK_MS, 20 + 50),  # half way through the 10 s span, with look-ahead
        (100 * S - 2 * S, 120),  # the span has ended: all of it, ready for the instant
        (100 * S, 20 + 100),  # the window runs: its count (what a source says is left of it)
        (400 * S, 20),  # the window is over: nothing more for it
    ],
)
def test_a_warmup_ramps_up_in_the_seconds_just_before_its_instant(now: int, want: int) -> None:
    """100 entries at 10/s take 10 s, ending the 2 s lead before the instant; standing size always counts."""
    demands = [size("a", 20), burst("a", 100, 100 * S)]
    assert planner.plan(demands, now_ms=now, rate=10, max_age_ms=AGE)[("a", None)].count == want


def test_earliest_deadline_first_pushes_the_earlier_burst_back_so_the_later_one_is_fresh() -> None:
    """Two bursts 5 s apart that each need 10 s: the later gets the 10 s before it, the earlier the 10 s before."""
    first, second = burst("a", 100, 100 * S), burst("b", 100, 105 * S)
    spans = planner.schedule([first, second], rate=10, max_age_ms=AGE, lead_ms=0)
    assert spans[second] == Span(95 * S, 105 * S, 105 * S + planner.MARGIN_MS + planner.LOOK_MS - 270 * S)
    assert (spans[first].start_ms, spans[first].end_ms) == (85 * S, 95 * S)


def test_channels_due_together_share_one_span() -> None:
    """Demands with the same instant ramp side by side over their joint span, none older than the others."""
    one, two = burst("a", 50, 100 * S, cname="r1"), burst("a", 50, 100 * S, cname="r2")
    spans = planner.schedule([one, two], rate=10, max_age_ms=AGE, lead_ms=0)
    assert spans[one] == spans[two] and spans[one].needed_ms == 90 * S


@pytest.mark.parametrize(
    ("count", "feasible"),
    [(2660 - 30, True), (2660 - 10, True), (2660 + 10, False)],
)
def test_a_burst_that_would_need_acquiring_before_its_entries_could_live_is_a_shortfall(
    count: int, feasible: bool
) -> None:
    """At 10/s with max_age 270 s, lead 2 s, 1 s margin and the plan's 1 s look-ahead, one burst can have at most
    2660 ready."""
    d = burst("a", count, 1000 * S)
    spans = planner.schedule([d], rate=10, max_age_ms=AGE)
    assert spans[d].feasible is feasible
    assert bool(planner.shortfalls(spans)) is not feasible
    assert planner.largest_feasible(10, 270 * S) == 2660


def test_the_first_acquire_of_the_largest_feasible_burst_is_still_alive_at_its_instant() -> None:
    """The ramp looks ahead (acquires in flight): its first acquire goes out before its span begins, and the
    entry it brings must still have the margin left at the instant, for the largest burst the schedule accepts."""
    at = 1000 * S
    count = max(
        n
        for n in range(2500, 2800)
        if planner.schedule([burst("a", n, at)], rate=10, max_age_ms=AGE)[burst("a", n, at)].feasible
    )
    assert count == planner.largest_feasible(10, 270 * S)
    demands = [burst("a", count, at)]
    first = next(
        ms
        for ms in range(at - 300 * S, at, 100)
        if planner.plan(demands, now_ms=ms, rate=10, max_age_ms=AGE)[("a", None)].count > 0
    )
    assert first + 270 * S >= at + planner.MARGIN_MS


def test_the_reason_names_what_raises_the_target_and_the_standing_size() -> None:
    """status shows why: the warm-up's share first, then the standing size."""
    demands = [size("a", 20), burst("a", 100, 100 * S)]
    assert planner.plan(demands, now_ms=100 * S, rate=10, max_age_ms=AGE)[("a", None)].reason == (
        "warmup a +100; size 20"
    )
    assert planner.plan(demands, now_ms=0, rate=10, max_age_ms=AGE)[("a", None)].reason == "size 20"


def test_the_rate_left_for_warmups_is_the_headroom_share_less_the_standing_cost() -> None:
    """A standing 270 entries renewed every 270 s costs 1/s of the budget."""
    assert planner.available_rate(10, [size("a", 270)], AGE) == pytest.approx(10 * planner.HEADROOM - 1)


@pytest.mark.parametrize(
    ("rate", "latency", "cap"),
    [
        (9.5, 0.0, 6),  # even with an instant Agora, half a second of waiting for grants
        (9.5, 0.15, 8),  # the simulator's 150 ms
        (9.5, 1.0, 16),  # a slow day
        (9.5, 30.0, 64),  # bounded
        (1.0, 0.1, 2),  # at least two
        (9.5, float("nan"), 16),  # no estimate: as if 1 s
    ],
)
def test_the_derived_in_flight_cap_keeps_the_budget_busy_whatever_the_latency(
    rate: float, latency: float, cap: int
) -> None:
    """rate x (latency + 0.5 s) + 1, within [2, 64]."""
    assert planner.in_flight_cap(rate, latency) == cap


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("*", "*"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("sat,sun", "sun,sat"),
        ("MON-wed", "mon,tue,wed"),
    ],
)
def test_crontab_weekdays_are_read_as_crontab_reads_them(field: str, days: str) -> None:
    """0 and 7 are Sunday (APScheduler 3 alone would read 0 as Monday)."""
    assert warmups.crontab_weekdays(field) == days


def test_weekday_instants_in_a_time_zone() -> None:
    """0 9 * * 1-5 in Berlin, from a Saturday: Monday 09:00 local, 08:00 UTC in winter."""
    w = warmups.Warmup("a", 0, "0 9 * * 1-5", "Europe/Berlin", 10, 300)
    after = datetime(2026, 11, 28, 12, tzinfo=UTC)  # a Saturday
    got = list(w.instants(after, datetime(2026, 12, 1, tzinfo=UTC)))
    assert got == [datetime(2026, 11, 30, 8, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("cron", "zone", "problem"),
    [
        ("0 9 * *", "UTC", "must have 5 fields"),
        ("0 25 * * *", "UTC", "higher than the maximum"),
        ("0 9 * * 8", "UTC", "weekday '8' must be 0-7"),
        ("0 9 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_cron_or_zone_is_refused_with_the_reason(cron: str, zone: str, problem: str) -> None:
    """Invalid expressions and unknown zones raise ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=problem):
        warmups.trigger(cron, zone)


def config(*warmup: dict[str, object], size: int = 20, rate: float = 10) -> dict[str, object]:
    return {
        "agora": {"base_url": "https://api.sd-rtn.com", "rate_limit": rate},
        "pools": [
            {
                "name": "web",
                "appid": "0" * 32,
                "cname": "web-{uuid}",
                "scene": 1,
                "uid": "5",
                "size": size,
                "warmups": list(warmup),
            }
        ],
    }


def test_check_config_lists_every_warmup_problem_with_the_largest_feasible_size() -> None:
    """A size the budget cannot acquire within max_age, a bad cron, a bad zone and a bad duration: all named."""
    data = config(
        {"cron": "0 9 * * 1-5", "size": 5000},
        {"cron": "0 9 * *", "size": 10},
        {"cron": "0 9 * * *", "timezone": "Nowhere/City", "size": 10, "duration": 0},
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = caught.value.problems
    assert any(p.startswith("pools[0].warmups[0].size: 5000 cannot be served from the pool") for p in problems)
    # The start phase: its starters first spend 20 / (10 / 1.05) s on the pool's 20 standing entries.
    largest = planner.largest_feasible(
        (10 / 1.05) * planner.HEADROOM - 20 / 270, 270_000, ahead_ms=20 * 1000 / (10 / 1.05)
    )
    assert any("its starters start at 9.52/s from the instant, in order" in p for p in problems)
    assert any(p.endswith(f"the largest feasible size is {largest}") for p in problems)
    assert any(p.startswith("pools[0].warmups[1].cron: must have 5 fields") for p in problems)
    assert any(p.startswith("pools[0].warmups[2].timezone: unknown time zone") for p in problems)
    assert any(p.startswith("pools[0].warmups[2].duration: must be greater than 0 and at most 86400") for p in problems)


def test_a_feasible_warmup_loads_with_its_defaults() -> None:
    """timezone defaults to UTC and duration to 300 s; the issue's example loads."""
    loaded = parse_config(
        config(
            {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "size": 220, "duration": 600},
            {"cron": "0 12 * * *", "size": 5},
        )
    )
    first, second = loaded.pools[0].warmups
    assert (first.timezone, first.size, first.duration) == ("Europe/Berlin", 220, 600)
    assert (second.timezone, second.duration) == ("UTC", 300)
    assert loaded.warnings == ()


def test_overlapping_warmups_that_together_exceed_the_budget_get_a_warning_with_figures() -> None:
    """Each fits alone; one minute apart they do not (the first one's starters take the budget for 3.5 minutes,
    when the second must acquire): each warning names the instant and the shortfall."""
    loaded = parse_config(config({"cron": "0 9 * * *", "size": 2000}, {"cron": "1 9 * * *", "size": 2000}))
    found = overlap_warnings(loaded, datetime(2026, 11, 25, tzinfo=UTC))
    assert len(found) == 2
    assert found[0].startswith("pools[0].warmups[0] (0 9 * * *, UTC) at 2026-11-25T09:00:00+00:00: overlapping")
    assert found[1].startswith("pools[0].warmups[1] (1 9 * * *, UTC) at 2026-11-25T09:01:00+00:00: overlapping")
    assert all("entries short at" in f for f in found)


# -- learned demand ------------------------------------------------------------------------------------------

MONDAY_0900 = int(datetime(2026, 11, 2, 9, tzinfo=UTC).timestamp()) // 60  # a Monday, as a minute index


def recorded_weeks(weeks: int) -> dict[int, int]:
    """Weeks of history as the sampler records them: every minute present, 200 starts at 09:00 Monday-Friday."""
    start = MONDAY_0900 - 9 * 60
    history = {m: 1 if m % 7 == 0 else 0 for m in range(start, start + weeks * demand.WEEK)}
    for week in range(weeks):
        for day in range(5):
            history[MONDAY_0900 + week * demand.WEEK + day * demand.DAY] = 200
    return history


def test_replayed_history_raises_the_target_ahead_of_a_weekday_class_schedule() -> None:
    """Three recorded weeks of 200 starts at 09:00 on weekdays: replayed minute by minute through the fourth
    Monday, the target reaches max_size before 09:00 and never leaves [size, max_size]; not on the Saturday."""
    history = recorded_weeks(3)
    monday = MONDAY_0900 + 3 * demand.WEEK
    seen = {}
    for ms in range((monday - 10) * 60_000, (monday + 2) * 60_000, 1000):  # the injected clock, second by second
        found = demand.learned_demands("a", [None], history, now_minute=ms // 60_000, horizon=6, room=130)
        target = planner.plan([size("a", 20), *found], now_ms=ms, rate=9, max_age_ms=AGE)[("a", None)]
        assert 20 <= target.count <= 150
        seen[ms] = target
    ready = seen[monday * 60_000 - 2000]
    assert ready.count == 150 and ready.reason.startswith("learned weekly: 200+ starts at this minute")
    assert seen[(monday - 10) * 60_000].count == 20
    saturday = monday + 5 * demand.DAY
    assert demand.learned_demands("a", [None], history, now_minute=saturday - 1, horizon=6, room=130) == []


@pytest.mark.parametrize(
    ("days", "expect"),
    [
        ({1: 50, 2: 40, 3: 60}, 40),  # three days running, no week of history yet: the least of them
        ({1: 50, 2: 40}, None),  # two days are not a pattern
        ({1: 50, 2: 40, 3: 60, 7: 0}, None),  # a week ago this minute was recorded quiet: not daily after all
        ({1: 2, 2: 40, 3: 60}, None),  # below MIN_BURST once
        ({7: 30, 14: 35}, 30),  # weekly: the least of the last two weeks
    ],
)
def test_a_forecast_needs_demand_that_recurred_every_time(days: dict[int, int], expect: int | None) -> None:
    """Daily needs 3 days running (and not a quiet day a week ago); weekly needs 2 weeks running."""
    minute = 100_000
    history = {minute - d * demand.DAY: n for d, n in days.items()}
    found = demand.forecast(history, minute)
    assert (found.count if found else None) == expect


def test_learned_demands_never_add_more_than_the_room_to_max_size() -> None:
    """Successive forecast minutes share max_size - size between them, spread over the channels."""
    history = {m - demand.WEEK: 100 for m in (11, 12)} | {m - 2 * demand.WEEK: 100 for m in (11, 12)}
    found = demand.learned_demands("a", ["r1", "r2"], history, now_minute=10, horizon=5, room=30)
    assert [(d.cname, d.count) for d in found] == [("r1", 30), ("r2", 30)]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"auto_size": True}, "pools[0].max_size: required with auto_size = true"),
        ({"auto_size": True, "max_size": 10}, "pools[0].max_size: must be at least size 20 (got 10)"),
    ],
)
def test_auto_size_needs_a_max_size_no_smaller_than_size(extra: dict[str, object], problem: str) -> None:
    """auto_size without max_size, or a max_size below size, is refused naming the field."""
    data = config()
    data["pools"][0].update(extra)  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("popped", "want"),
    [
        ({}, (100, 50)),  # nothing popped since either window began
        ({("a", 10 * S): 30}, (70, 50)),  # the earliest running window takes the pops first
        ({("a", 10 * S): 130}, (0, 20)),  # what it cannot take goes to the next one
        ({("a", 10 * S): 500}, (0, 0)),  # never below nothing
    ],
)
def test_pops_use_up_running_consumable_windows_earliest_first(
    popped: dict[tuple[str, int], int], want: tuple[int, int]
) -> None:
    """A pop uses up one demand: the pool's pops since its earliest running window are credited in order; the
    standing size and a window not yet running keep their counts."""
    early, late = burst("a", 100, 10 * S), burst("a", 50, 20 * S)
    early, late = (dataclasses.replace(d, consumable=True) for d in (early, late))
    later = dataclasses.replace(burst("a", 10, 900 * S), consumable=True)
    got = planner.left([size("a", 20), early, late, later], popped, now_ms=30 * S)
    assert [d.count for d in got] == [20, *want, 10]


def test_a_pool_of_several_channels_shares_its_pops_among_them() -> None:
    """30 pops of a pool-wide window of 10 per channel over 4 channels leave ceil((40 - 30) / 4) = 3 each."""
    d = dataclasses.replace(burst("a", 10, 10 * S), consumable=True)
    [got] = planner.left([d], {("a", 10 * S): 30}, now_ms=11 * S, channels={"a": 4})
    assert got.count == 3


def test_a_bursts_start_phase_is_budget_an_earlier_bursts_acquires_cannot_use() -> None:
    """Two bursts of 100 at 10/s, 5 s apart: the later one's acquiring cannot use the 10 s the earlier one's starts
    take from its instant, so it begins 10 s earlier than without the start phase."""
    first, second = burst("a", 100, 100 * S), burst("b", 100, 105 * S)
    plain = planner.schedule([first, second], rate=10, max_age_ms=AGE, lead_ms=0)
    phased = planner.schedule([first, second], rate=10, max_age_ms=AGE, lead_ms=0, start_rate=10)
    assert (plain[second].start_ms, plain[second].end_ms) == (95 * S, 105 * S)
    # The earlier burst's starts run 100..110 s: the later one's 10 s of acquiring end at 105 s but skip 100..105.
    assert (phased[second].start_ms, phased[second].end_ms) == (90 * S, 105 * S)
    assert phased[first].end_ms == 90 * S
    # Its ramp runs in the open time only: all 100 by 100 s, standing still through the starts (none asked then).
    ramp = [planner.ramp(100, phased[second], t * S) for t in (90, 95, 100, 103, 105)]
    assert ramp == [0, 50, 100, 100, 100]
    assert [planner.ramp(100, plain[second], t * S) for t in (95, 100, 105)] == [0, 50, 100]


@pytest.mark.parametrize(
    ("standing", "count", "feasible"),
    [(0, 2630, True), (200, 2630, False), (200, 2430, True)],  # 200 standing ahead: 20 s of starts first
)
def test_an_entry_must_be_within_max_age_at_its_starters_turn(standing: int, count: int, feasible: bool) -> None:
    """The first entry acquired is started first, after the pool's standing entries: those starts count in its age."""
    d = burst("a", count, 1000 * S)
    spans = planner.schedule([d], rate=10, max_age_ms=AGE, start_rate=10, standing={"a": standing})
    assert spans[d].feasible is feasible
    assert planner.largest_feasible(10, 270 * S, ahead_ms=standing * 100) == 2660 - standing
