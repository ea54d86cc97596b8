"""Start outcomes by ID age, and the effective max_age pops honour: how Redis keeps both, read in one place.

Starters report every start (`report()`, `FCALL ridpool_report`); the function counts it in the pool's `starts`
hash by the ID's age at the report, in buckets fine near zero (`EDGES`: 0-2, 2-5, 5-10, 10-20, 20-30 s, then 30 s
buckets), per minute for the last hour and since the hash was made. The edges have one home, the `EDGES` line of
functions.lua, read here. With `auto_max_age` the daemon decides an effective max_age from these reports
(daemon/freshness.py) and stores it in the pool's meta hash (`FRESH_FIELDS`, written by `FCALL ridpool_freshen`),
where every pop reads it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ridpool.functions import LIBRARY, text


def _lua_list(name: str) -> tuple[int, ...]:
    found = re.search(rf"^local {name} = \{{([\d, ]+)\}}", LIBRARY, re.MULTILINE)
    assert found, f"functions.lua has no {name} line"
    return tuple(int(v) for v in found.group(1).split(","))


def _lua_number(name: str) -> int:
    found = re.search(rf"^local {name} = (\d+)", LIBRARY, re.MULTILINE)
    assert found, f"functions.lua has no {name} line"
    return int(found.group(1))


# Lower edges (s) of the age buckets; a bucket runs to the next edge, the last to TOP (an ID lives five minutes).
EDGES = _lua_list("EDGES")
TOP = _lua_number("AGE_TOP")
OUTCOMES = ("ok", "failed")
HOUR = 60  # minutes: the figures status shows, the window decisions read


def bucket_of(age_ms: float) -> int:
    """The lower edge (s) of the bucket an ID of this age falls in (negative ages, a clock's error, are 0)."""
    return EDGES[max(0, bisect.bisect_right(EDGES, age_ms / 1000) - 1)]


def upper(edge: int) -> int:
    """The bucket's upper edge (s)."""
    i = EDGES.index(edge)
    return EDGES[i + 1] if i + 1 < len(EDGES) else TOP


def label(edge: int) -> str:
    """The bucket as status, metrics and the starts hash name it: "0-2", "30-60", "270-300"."""
    return f"{edge}-{upper(edge)}"


@dataclass(frozen=True, slots=True)
class Tally:
    """Starts reported in one bucket (of one minute, or summed)."""

    ok: int = 0
    failed: int = 0

    @property
    def n(self) -> int:
        return self.ok + self.failed

    @property
    def rate(self) -> float:
        return self.failed / self.n if self.n else 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.ok + other.ok, self.failed + other.failed)


def per_minute(starts: Mapping[str, str]) -> dict[int, dict[int, Tally]]:
    """The starts hash's per-minute fields ('<minute>:<outcome>:<edge>') as minute -> bucket edge -> Tally."""
    out: dict[int, dict[int, Tally]] = {}
    for name, value in starts.items():
        parts = name.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in OUTCOMES or not parts[2].isdigit():
            continue
        minute, edge, count = int(parts[0]), int(parts[2]), int(value)
        if edge not in EDGES:
            continue
        before = out.setdefault(minute, {}).get(edge, Tally())
        out[minute][edge] = before + (Tally(ok=count) if parts[1] == "ok" else Tally(failed=count))
    return out


def over(minutes: Mapping[int, Mapping[int, Tally]], *, now_minute: int, window: int = HOUR) -> dict[int, Tally]:
    """Every bucket's starts over the minutes (now_minute - window, now_minute]."""
    out: dict[int, Tally] = {}
    for minute, tallies in minutes.items():
        if now_minute - window < minute <= now_minute:
            for edge, tally in tallies.items():
                out[edge] = out.get(edge, Tally()) + tally
    return out


def cumulative(starts: Mapping[str, str]) -> dict[str, int]:
    """The counters since the hash was made: '<outcome>:<label>' and 'code:<code>' (what /metrics exports)."""
    names = {f"{o}:{label(e)}" for o in OUTCOMES for e in EDGES}
    return {k: int(v) for k, v in starts.items() if k in names or k.startswith("code:")}


# The meta fields of the effective max_age (ridpool_freshen writes them, every pop reads them).
FRESH_FIELDS = (
    "fresh_max_age_ms",
    "fresh_since",
    "fresh_minute",
    "fresh_until",
    "fresh_probe",
    "fresh_share",
    "fresh_up_to_ms",
    "fresh_reason",
)


@dataclass(frozen=True, slots=True)
class Effective:
    """A pool's stored effective max_age, as pops honour it until `until_ms` (server time)."""

    max_age: float  # s
    since: int  # the minute it was last changed (server ms // 60000)
    minute: int  # the minute last decided
    until_ms: int
    probe: str  # '', 'younger' or 'older'
    share: float
    up_to: float  # s: for 'older', the probes may take entries up to this age
    reason: str


def effective(fields: Mapping[str, str | None], now_ms: int) -> Effective | None:
    """The decision stored in a pool's meta hash (`fields` holding FRESH_FIELDS), or None: none, or lapsed (pops
    then offer up to the configured max_age)."""
    values = [fields.get(name) for name in FRESH_FIELDS]
    if any(v is None for v in values[:4]):
        return None
    max_age_ms, since, minute, until_ms, probe, share, up_to_ms, reason = (v or "" for v in values)
    if int(until_ms) <= now_ms:
        return None
    return Effective(
        int(max_age_ms) / 1000,
        int(since),
        int(minute),
        int(until_ms),
        probe,
        float(share or 0),
        int(up_to_ms or 0) / 1000,
        reason,
    )


def stored(values: Sequence[Any], now_ms: int) -> Effective | None:
    """`effective` from an HMGET of FRESH_FIELDS as Redis answered it (bytes or text, None for a missing field)."""
    return effective({k: None if v is None else text(v) for k, v in zip(FRESH_FIELDS, values, strict=True)}, now_ms)


def hour_rates(tallies: Mapping[int, Tally]) -> Iterable[tuple[str, Tally]]:
    """The last hour's buckets that had starts, youngest first, labelled."""
    return ((label(e), tallies[e]) for e in sorted(tallies) if tallies[e].n)
