"""Announced channels as a demand source: every pending announcement of an `announced` pool becomes a
`planner.Demand` for its channel, planned earliest deadline first together with every other pool's needs.

An announcement's demand is what it still wants ready: the channel's live entries plus the entries still to
acquire (`ridpool_announced` keeps that count: an add uses one up, an entry retired before it expires unpopped
gives one back). So the demand stays the same while entries arrive, and shrinks only as they are popped: popped
entries are not replaced. It runs from `at` to the end of the announcement (`at` + the pool's grace).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio
import structlog
from ridpool import functions
from ridpool.daemon import planner
from ridpool.daemon.config import Config, PoolConfig
from ridpool.keys import PoolKeys, pool_keys

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
    """Asked by the refill every round for the demands of every pending announcement."""

    def __init__(self, client: redis.asyncio.Redis, config: Config, *, ahead_ms: int = RETIRE_AHEAD_MS) -> None:
        self.redis = client
        self.pools: list[PoolConfig] = [p for p in config.pools if p.announced]
        self.keys: dict[str, PoolKeys] = {p.name: pool_keys(config.redis.key_prefix, p.name) for p in self.pools}
        self.ahead_ms = ahead_ms
        standing = [planner.Demand(p.name, c, p.size, 0, None, "size") for p in config.pools for c in p.slots]
        self.rate = planner.available_rate(
            config.sustained_rate, standing, {p.name: p.max_age_ms for p in config.pools}
        )
        self.shown: dict[str, dict[str, str]] = {}  # what each pool's stats hash says of its announcements

    async def demands(self, now_ms: int) -> list[planner.Demand]:
        out: list[planner.Demand] = []
        for pool in self.pools:
            out += await self._pool(pool)
        return out

    async def _pool(self, pool: PoolConfig) -> list[planner.Demand]:
        keys = self.keys[pool.name]
        _, pending = functions.parse_announcements(
            await functions.aexecute(self.redis, functions.announcements_call(keys))
        )
        cnames = [a.cname for a in pending]
        now, states = 0, list[functions.ChannelState]()
        if cnames:
            call = functions.announced_call(keys, cnames, ahead_ms=self.ahead_ms)
            now, states = functions.parse_announced(cnames, await functions.aexecute(self.redis, call))
        demands, needs = [], []
        for state in states:
            a = state.announcement
            if a is None:
                continue
            wanted = state.live + max(0, a.left)
            demands.append(planner.Demand(pool.name, a.cname, wanted, a.at_ms, a.until_ms, f"announced {a.cname}"))
            needs.append(Need(a.cname, a.at_ms, wanted - state.live))
        await self._show(pool, keys, demands, at_risk(needs, now_ms=now, rate=self.rate), now)
        return demands

    async def _show(
        self, pool: PoolConfig, keys: PoolKeys, demands: list[planner.Demand], late: list[str], now_ms: int
    ) -> None:
        """The pool's pending announcements, next deadline and those at risk, in its stats hash for `status`."""
        upcoming = [d.at_ms for d in demands if d.at_ms > now_ms]
        fields = {
            "announced_pending": str(len(demands)),
            "announced_next": iso(min(upcoming)) if upcoming else "",
            "announced_at_risk": str(len(late)),
            "announced_at_risk_cnames": ",".join(late[:AT_RISK_SHOWN]),
        }
        if self.shown.get(pool.name) == fields:
            return
        if late and self.shown.get(pool.name, {}).get("announced_at_risk_cnames") != fields["announced_at_risk_cnames"]:
            log.warning("announce.at_risk", pool=pool.name, at_risk=len(late), cnames=late[:AT_RISK_SHOWN])
        await self.redis.hset(keys.stats, mapping=fields)  # type: ignore[arg-type]
        self.shown[pool.name] = fields
