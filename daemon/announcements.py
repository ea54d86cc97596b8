"""Announced channels as a demand source: every pending announcement of an `announced` pool becomes a
`planner.Demand` for its channel, planned earliest deadline first together with every other pool's needs.

An announcement's demand is what it still wants ready: the channel's live entries plus the entries still to
acquire (`ridpool_announced` keeps that count: an add uses one up, an entry retired before it expires unpopped
gives one back). So the demand stays the same while entries arrive, and shrinks only as they are popped: popped
entries are not replaced. It runs from `at` to the end of the announcement (`at` + the pool's grace).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from ridpool import functions
from ridpool.daemon import planner
from ridpool.keys import PoolKeys

if TYPE_CHECKING:
    from ridpool.daemon.sources import SourceContext

log = structlog.get_logger("ridpool.announcements")

# An entry of a pending announcement with less life than this is retired and acquired again: enough for a
# replacement to be acquired and stored before it dies, and for a starter's min_ttl of a few seconds.
RETIRE_AHEAD_MS = 10_000
AT_RISK_SHOWN = 10  # channel names listed in the stats hash; the count is always whole


@dataclass(frozen=True, slots=True)
class Need:
    """One announcement as the at-risk check sees it."""

    cname: str
    at_ms: int
    missing: int  # entries it still lacks (wanted minus live)


def at_risk(needs: Sequence[Need], *, now_ms: int, rate: float) -> list[str]:
    """The channels that cannot all be ready at their `at` at `rate` acquires/s, earliest deadline first: an
    announcement is at risk when the work due by its `at` (its own and every earlier one's) needs longer than
    what is left before it (pure: table-tested)."""
    late: list[str] = []
    work = 0
    for need in sorted(needs, key=lambda n: (n.at_ms, n.cname)):
        work += max(0, need.missing)
        if need.missing > 0 and (rate <= 0 or now_ms + math.ceil(work * 1000 / rate) > need.at_ms):
            late.append(need.cname)
    return late


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


class Announcements:
    """Every pending announcement of the `announced` pools as demands. A demand source (`daemon/sources.py`)."""

    def __init__(self, context: SourceContext, *, ahead_ms: int = RETIRE_AHEAD_MS) -> None:
        config = context.config
        self.redis = context.redis
        self.configs = {p.name: p for p in config.pools if p.announced}
        self.keys: dict[str, PoolKeys] = {name: context.keys(name) for name in self.configs}
        self.ahead_ms = ahead_ms
        standing = [planner.Demand(p.name, None, p.size, 0, None, "size") for p in config.pools if p.slots]
        self.rate = planner.available_rate(
            config.sustained_rate, standing, {p.name: p.max_age_ms for p in config.pools}, config.channels
        )
        self.pending: dict[str, list[planner.Demand]] = {}
        self.shown: dict[str, dict[str, str]] = {}  # what the notes said at each pool's last refresh

    @property
    def pools(self) -> Sequence[str]:
        return list(self.configs)

    async def refresh(self, pool: str, now_ms: int) -> None:
        keys = self.keys[pool]
        _, pending = functions.parse_announcements(
            await functions.aexecute(self.redis, functions.announcements_call(keys))
        )
        cnames = [a.cname for a in pending]
        now, states = now_ms, list[functions.ChannelState]()
        if cnames:
            call = functions.announced_call(keys, cnames, ahead_ms=self.ahead_ms)
            now, states = functions.parse_announced(cnames, await functions.aexecute(self.redis, call))
        demands, needs = [], []
        for state in states:
            a = state.announcement
            if a is None:
                continue
            wanted = state.live + max(0, a.left)
            reason = f"announced {a.cname}"
            # Not consumable: what it still lacks is counted in Redis (ridpool_add uses one up, a pop lowers the
            # live count, and ridpool_reserve never leases more than it lacks), so `wanted` is already what is left.
            demands.append(planner.Demand(pool, a.cname, wanted, a.at_ms, a.until_ms, reason))
            needs.append(Need(a.cname, a.at_ms, wanted - state.live))
        self.pending[pool] = demands
        late = at_risk(needs, now_ms=now, rate=self.rate)
        upcoming = [d.at_ms for d in demands if d.at_ms > now]
        fields = {
            "announced_pending": str(len(demands)),
            "announced_next": iso(min(upcoming)) if upcoming else "",
            "announced_at_risk": str(len(late)),
            "announced_at_risk_cnames": ",".join(late[:AT_RISK_SHOWN]),
        }
        if late and self.shown.get(pool, {}).get("announced_at_risk_cnames") != fields["announced_at_risk_cnames"]:
            log.warning("announce.at_risk", pool=pool, at_risk=len(late), cnames=late[:AT_RISK_SHOWN])
        self.shown[pool] = fields

    def demands(self, pool: str, now_ms: int) -> Sequence[planner.Demand]:
        return self.pending.get(pool, [])

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return self.shown.get(pool, {})
