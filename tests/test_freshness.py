"""Adaptive max_age as a pure function of recorded start reports: replayed minute by minute, no clock, no sleep."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from ridpool import ages
from ridpool.daemon import freshness
from ridpool.daemon.config import parse_config
from ridpool.daemon.freshness import Decision, Minute, Policy, Tally
from ridpool.errors import ConfigError

POLICY = Policy(max_age=270, min_max_age=20)


def replay(
    history: Sequence[Minute], *, start: float = 270, since: int | None = None, policy: Policy = POLICY
) -> list[Decision]:
    """Each minute's reports recorded, then a decision carried on to the next minute, as the daemon would;
    `start` the value decided at minute `since` (None: long ago)."""
    reports: dict[int, Minute] = {}
    decisions, current = [], start
    for minute, tallies in enumerate(history):
        reports[minute] = tallies
        decision = freshness.decide(current, reports, now_minute=minute, policy=policy, since=since)
        decisions.append(decision)
        if decision.changed:
            current, since = decision.max_age, minute
    return decisions


def starts(fail_above: float, rate: float, ages: dict[int, int]) -> Minute:
    """One minute of starts: `ages` bucket edge -> starts in it; those at `fail_above` s or older fail at `rate`
    (exactly, rounded: a recorded history, not a random one)."""
    return {
        edge: Tally(n - round(n * rate), round(n * rate)) if edge >= fail_above else Tally(n, 0)
        for edge, n in ages.items()
    }


OLD = {60: 20, 90: 20, 120: 20, 150: 20, 180: 20}  # a large standing pool: popped IDs 60-200 s old
YOUNG = {20: 5, 30: 15}  # the few starts of IDs refilled after a run of pops


def offered_up_to_60(spill: int) -> Minute:
    """A minute once entries are offered up to 60 s: starts mostly 20-60 s old, `spill` of them just past 60 s
    (popped close to 60 s, started a moment later), failing 30% like every start older than 60 s."""
    return starts(60, 0.3, {20: 10, 30: 30, 60: spill})


def drop_history() -> list[Minute]:
    """Starts older than 60 s fail 30%, younger ones never: two minutes of mostly old IDs with a few young ones,
    then what a pool offering up to 60 s reports (a few starts spill past 60 s)."""
    return [starts(60, 0.3, {**OLD, **YOUNG}) for _ in range(2)] + [offered_up_to_60(3) for _ in range(20)]


def spill_history() -> list[Minute]:
    """The same, but half the starts of the shorter life spill past 60 s (FIFO pops take the oldest entries)."""
    return [starts(60, 0.3, {**OLD, **YOUNG}) for _ in range(2)] + [offered_up_to_60(40) for _ in range(20)]


def no_young_then_young() -> list[Minute]:
    """The same failures with no young starts at all for 5 minutes (FIFO pops only ever old IDs), then a minute
    with some (the probe's), then the shorter life."""
    young = [starts(60, 0.3, {**OLD, **YOUNG})]
    return [starts(60, 0.3, OLD) for _ in range(5)] + young + [offered_up_to_60(3) for _ in range(20)]


def age_blind_history() -> list[Minute]:
    """30% of starts fail whatever the age (an Agora outage): plenty of reports, young and old."""
    return [starts(0, 0.3, {5: 20, 20: 20, 30: 20, **OLD}) for _ in range(30)]


def few_reports() -> list[Minute]:
    """Two of four old starts failed and a handful of young ones went fine: not enough to be sure."""
    return [{120: Tally(2, 2), 30: Tally(5, 0)}]


def three_of_three() -> list[Minute]:
    """Three old starts, all failed, against 25 young ones fine: significant on paper, too few to be sure."""
    return [{120: Tally(0, 3), 30: Tally(25, 0)}]


def few_over_time() -> list[Minute]:
    """One old start in three fails, a start a minute: still under 20 old reports after 15 minutes."""
    return [{120: Tally(0, 1)} if m % 3 == 0 else {120: Tally(1, 0), 30: Tally(2, 0)} for m in range(15)]


@pytest.mark.parametrize(
    ("history", "final", "path"),
    [
        (drop_history, 60.0, [270, 60]),
        (spill_history, 30.0, [270, 60, 30]),  # entries offered up to 60 s start past it: down a step more
        (no_young_then_young, 60.0, [270, 60]),  # the drop waits for young evidence, asked for by a probe
        (age_blind_history, 270.0, [270]),  # failures that do not depend on age: a shorter life would not help
        (few_reports, 270.0, [270]),
        (three_of_three, 270.0, [270]),
        (few_over_time, 270.0, [270]),
    ],
)
def test_replayed_report_histories_move_max_age_only_on_evidence(
    history: Callable[[], list[Minute]], final: float, path: list[float]
) -> None:
    """A drop, a drop that waits for younger starts, no drop when failures do not depend on age or reports are
    too few: the effective max_age after each recorded minute, every change with its reason."""
    decisions = replay(history())
    seen = [270.0] + [d.max_age for d in decisions]
    assert [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]] == path
    assert decisions[-1].max_age == final
    for d in decisions:
        if d.changed:
            assert "max_age" in d.reason and "->" in d.reason and "Fisher p=" in d.reason, d.reason


def test_without_younger_starts_the_decision_asks_for_younger_entries_before_dropping() -> None:
    """Old starts failing 30% with no young one to compare with: max_age holds and a young probe is asked for."""
    first = replay(no_young_then_young())[:5]
    assert all(d.max_age == 270 and not d.changed for d in first)
    assert all(d.probe == freshness.Probe("younger", 0.05) for d in first)
    assert "only 0 younger starts" in first[0].reason


def test_a_drop_names_its_figures() -> None:
    """The first drop says which ages fail how often against younger ones, with both p-values."""
    drop = next(d for d in replay(drop_history()) if d.changed)
    assert drop.max_age == 60
    assert (drop.older, drop.younger) == (Tally(140, 60), Tally(40, 0))  # the second minute: enough to be sure
    assert drop.reason.startswith("starts aged 60 s and more fail 60/200 (30%), above 5%")
    assert drop.reason.endswith("max_age 270 -> 60 s")
    assert drop.probe == freshness.Probe("older", 0.05, 90.0)
    assert drop.fields() == {
        "max_age": 60.0,
        "reason": drop.reason,
        "older_starts": 200,
        "older_failed": 60,
        "younger_starts": 40,
        "younger_failed": 0,
        "p_value": drop.p_value,
        "probe": "older",
    }


def test_max_age_never_goes_below_min_max_age() -> None:
    """Starts fail from 5 s on: the value stops at the floor, 20 s (or 45 s with min_max_age 45)."""
    history = [starts(5, 0.5, {2: 30, 5: 30, 10: 30, 20: 30, 30: 30, **OLD}) for _ in range(20)]
    assert min(d.max_age for d in replay(history)) == 20
    floor45 = Policy(max_age=270, min_max_age=45)
    assert min(d.max_age for d in replay(history, policy=floor45)) == 45


def recovery(minutes: int, probes: int = 12) -> list[Minute]:
    """After a drop to 60 s, failures stopped: normal starts just above 30-60 s, probes one band above."""
    out: list[Minute] = []
    for m in range(minutes):
        band = freshness.EDGES[6 + min(6, m // 6)]  # where probes of the value reached by then would land
        out.append({30: Tally(40, 0), band: Tally(probes, 0)})
    return out


def test_the_way_back_up_is_one_band_at_a_time_on_clean_probes() -> None:
    """Probe starts above the value, none failing: up to the next edge each time the band shows below 5%
    with 95% confidence (59 clean starts at least), never a jump, back to the ceiling."""
    decisions = replay(recovery(120), start=60)
    values = [60.0] + [d.max_age for d in decisions]
    changes = [(a, b) for a, b in itertools.pairwise(values) if a != b]
    assert changes == [(60, 90), (90, 120), (120, 150), (150, 180), (180, 210), (210, 240), (240, 270)]
    assert decisions[-1].max_age == 270 and decisions[-1].probe is None
    first_up = next(d for d in decisions if d.changed)
    assert first_up.older.n >= 59 and first_up.older.failed == 0
    assert first_up.reason.startswith("starts aged 60-90 s failed 0/")


def test_no_way_up_while_recent_starts_of_older_ids_failed() -> None:
    """Down to 60 s because starts aged 90 s and more failed; then clean probes, but those failures are within
    the window: held (and not pushed further down by them) until they age out of it, then up."""
    failed_before = [starts(90, 0.3, {20: 10, 30: 40, 60: 15, 90: 30, 120: 30}) for _ in range(5)]
    history = failed_before + [{20: Tally(10, 0), 30: Tally(40, 0), 60: Tally(15, 0)} for _ in range(80)]
    decisions = replay(history, start=60, since=4, policy=Policy(max_age=90, min_max_age=20))
    held = decisions[5:60]
    assert all(d.max_age == 60 for d in held) and "failed 90/300 (30%)" in held[0].reason
    assert decisions[-1].max_age == 90
    assert next(i for i, d in enumerate(decisions) if d.max_age == 90) >= 60  # the failures left the hour first


def test_probes_that_keep_failing_keep_max_age_down() -> None:
    """At 60 s with probes up to 90 s failing 30%, the value neither rises nor falls further."""
    history = [{30: Tally(40, 0), 60: Tally(7, 3)} for _ in range(90)]
    assert {d.max_age for d in replay(history, start=60)} == {60.0}


@pytest.mark.parametrize(("current", "expected"), [(300.0, 270.0), (5.0, 20.0), (90.0, 90.0)])
def test_a_value_outside_the_bounds_is_brought_inside(current: float, expected: float) -> None:
    """A config changed since the last decision: the value is clamped into [min_max_age, max_age] at once."""
    decision = freshness.decide(current, {}, now_minute=0, policy=POLICY)
    assert decision.max_age == expected and decision.changed is (current != expected)


def test_reports_outside_the_window_are_not_read() -> None:
    """An hour's window: failures recorded 61 minutes ago do not count."""
    reports = {0: starts(60, 0.5, {**OLD, **YOUNG})}
    assert freshness.decide(270, reports, now_minute=0, policy=POLICY).max_age < 270
    assert freshness.decide(270, reports, now_minute=60, policy=POLICY).max_age == 270


@pytest.mark.parametrize(
    ("age_ms", "edge", "label"),
    [
        (0, 0, "0-2"),
        (1999, 0, "0-2"),
        (2000, 2, "2-5"),
        (29_999, 20, "20-30"),
        (45_000, 30, "30-60"),
        (299_000, 270, "270-300"),
        (-50, 0, "0-2"),
    ],
)
def test_ages_fall_in_buckets_fine_near_zero(age_ms: int, edge: int, label: str) -> None:
    """0-2, 2-5, 5-10, 10-20, 20-30 s, then 30 s buckets up to five minutes."""
    assert ages.bucket_of(age_ms) == edge and ages.label(edge) == label


def _binom(k: int, n: int, p: float, upper: bool) -> float:
    picked = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in picked)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [
        (0, 10, 0.05),
        (2, 4, 0.05),
        (6, 20, 0.05),
        (30, 100, 0.05),
        (0, 59, 0.05),
        (15, 40, 0.3),
        (40, 40, 0.5),
        (1, 1, 0.99),
    ],
)
def test_the_binomial_tails_are_exact(k: int, n: int, p: float) -> None:
    """P(X >= k) and P(X <= k) agree with the sums of math.comb terms."""
    assert freshness.binom_sf(k, n, p) == pytest.approx(_binom(k, n, p, True), rel=1e-9, abs=1e-300)
    assert freshness.binom_cdf(k, n, p) == pytest.approx(_binom(k, n, p, False), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Tally(70, 30), Tally(20, 0)),
        (Tally(7, 3), Tally(7, 3)),
        (Tally(0, 5), Tally(5, 0)),
        (Tally(10, 0), Tally(0, 10)),
        (Tally(3, 1), Tally(100, 2)),
    ],
)
def test_the_fisher_test_is_exact(a: Tally, b: Tally) -> None:
    """The one-sided p-value agrees with the hypergeometric sum written out."""
    total, failures = a.n + b.n, a.failed + b.failed
    want = sum(
        math.comb(failures, i) * math.comb(total - failures, a.n - i)
        for i in range(a.failed, min(failures, a.n) + 1)
        if a.n - i <= total - failures
    ) / math.comb(total, a.n)
    assert freshness.fisher_greater(a, b) == pytest.approx(want, rel=1e-9)


def pool(**extra: Any) -> dict[str, Any]:
    return {"name": "web", "appid": "0" * 32, "cname": "web-{uuid}", "scene": 1, "uid": "5", "size": 5, **extra}


def parse(**extra: Any) -> Any:
    return parse_config({"agora": {"base_url": "https://api.sd-rtn.com"}, "pools": [pool(**extra)]})


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"auto_max_age": True, "max_age": 60, "min_max_age": 60}, "pools[0].min_max_age: must be below max_age 60"),
        ({"auto_max_age": True, "max_age": 15}, "pools[0].min_max_age: must be below max_age 15 (the ceiling"),
        ({"min_max_age": 1}, "pools[0].min_max_age: must be from 2 to below 300 seconds (got 1)"),
        ({"min_max_age": 300}, "pools[0].min_max_age: must be from 2 to below 300 seconds (got 300)"),
        ({"max_start_failure": 0}, "pools[0].max_start_failure: must be greater than 0 and below 1"),
        ({"max_start_failure": 1.5}, "pools[0].max_start_failure: must be greater than 0 and below 1"),
        ({"max_start_failure": "5%"}, "pools[0].max_start_failure: must be a number"),
        ({"auto_max_age": "yes"}, "pools[0].auto_max_age: must be true or false"),
    ],
)
def test_bad_freshness_settings_are_refused_naming_the_field(extra: dict[str, Any], problem: str) -> None:
    """min_max_age at or above max_age, out of range, a failure share outside (0, 1), a non-bool switch."""
    with pytest.raises(ConfigError) as caught:
        parse(**extra)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_freshness_settings_load_and_say_what_the_refill_and_check_config_plan_with() -> None:
    """The issue's keys as written; the refill plans with the effective value within the bounds, check-config
    judges feasibility at the floor; without auto_max_age both are max_age, and a floor set then is a warning."""
    on = parse(max_age=270, auto_max_age=True, min_max_age=20, max_start_failure=0.02).pools[0]
    assert (on.auto_max_age, on.min_max_age, on.max_start_failure) == (True, 20, 0.02)
    assert Policy.of(on) == Policy(max_age=270, min_max_age=20, max_start_failure=0.02)
    assert [freshness.planning_max_age_ms(on, e) for e in (None, 60, 5, 400)] == [270_000, 60_000, 20_000, 270_000]
    assert freshness.feasibility_max_age_ms(on) == 20_000
    off = parse(min_max_age=30)
    assert freshness.planning_max_age_ms(off.pools[0], 60) == freshness.feasibility_max_age_ms(off.pools[0]) == 270_000
    assert off.warnings == ("pools[0]: min_max_age only take effect with auto_max_age = true",)
    assert parse().pools[0].max_start_failure == 0.05 and parse().warnings == ()
