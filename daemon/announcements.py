"""Announced channels as a demand source: every pending announcement of an `announced` pool due within the
planning horizon becomes a `planner.Demand` for its channel, planned earliest deadline first together with every
other pool's needs.

An announcement's demand is what it still lacks (`ann:left`: an add uses one up, an entry retired before it
expires unpopped gives one back), on top of the channel's live entries: so the demand stays the same while
entries arrive, and shrinks only as they are popped (popped entries are not replaced). It runs from `at` to the
end of the announcement (`at` + the pool's grace).

Read incrementally, with state carried between rounds: the announcements due within the horizon are read once
(through the `ann:at` time index, a page at a time), those entering it as time passes a window at a time, and the
ones the pool's change feed names (announced again, an entry added or retired) are read again; nothing is read
in proportion to all that is pending.
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
from ridpool.functions import CHUNK, Announcement
from ridpool.keys import PoolKeys

if TYPE_CHECKING:
    from ridpool.daemon.sources import SourceContext

log = structlog.get_logger("ridpool.announcements")

AT_RISK_SHOWN = 10  # channel names listed in the stats hash; the count is always whole
# The horizon is read this much further ahead than it must be, so that the window is read again only this often.
WINDOW_SLACK_MS = 1_000


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
    """The pending announcements of the `announced` pools as demands. A demand source (`daemon/sources.py`)."""

    def __init__(self, context: SourceContext) -> None:
        config = context.config
        self.redis = context.redis
        self.configs = {p.name: p for p in config.pools if p.announced}
        self.keys: dict[str, PoolKeys] = {name: context.keys(name) for name in self.configs}
        # Far enough ahead that no announcement can need acquiring before it comes into view (its entries would
        # die first): the horizon warm-ups are planned over too.
        self.horizon_ms = {name: 2 * p.max_age_ms + 60_000 for name, p in self.configs.items()}
        standing = [planner.Demand(p.name, None, p.size, 0, None, "size") for p in config.pools if p.slots]
        self.rate = planner.available_rate(
            config.sustained_rate, standing, {p.name: p.max_age_ms for p in config.pools}, config.channels
        )
        self.known: dict[str, dict[str, Announcement]] = {name: {} for name in self.configs}
        self.read_to: dict[str, int] = {}  # pool -> announcements with `at` up to here have been read
        self.pending: dict[str, int] = {}  # pool -> announcements pending in all (within the horizon or not)
        self.cached: dict[str, list[planner.Demand]] = {}  # pool -> its demands, rebuilt when `known` changes
        self.shown: dict[str, dict[str, str]] = {}  # what the notes said at each pool's last change

    @property
    def pools(self) -> Sequence[str]:
        return list(self.configs)

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        keys, known = self.keys[pool], self.known[pool]
        dirty = False
        until = now_ms + self.horizon_ms[pool]
        if pool not in self.read_to or until > self.read_to[pool]:
            # The announcements entering the horizon (all of those within it, the first time).
            start = self.read_to.get(pool, -1) + 1
            end = until + WINDOW_SLACK_MS
            offset = 0
            while True:
                call = functions.announcements_call(keys, from_ms=start, to_ms=end, offset=offset)
                page = functions.parse_announcements(await functions.aexecute(self.redis, call))
                dirty = dirty or self.pending.get(pool) != page.pending
                self.pending[pool] = page.pending
                for a in page.found:
                    known[a.cname] = a
                dirty = dirty or bool(page.found)
                if page.read < CHUNK:
                    break
                offset += page.read
            self.read_to[pool] = end
        if changed:
            dirty = await self._reread(pool, sorted(changed), now_ms) or dirty
        ended = [c for c, a in known.items() if a.until_ms <= now_ms]
        for cname in ended:
            del known[cname]
        if ended:
            dirty = True
            await self._forget_ended(keys)
        if dirty or pool not in self.cached:
            with functions.reaching(self.redis):
                self.pending[pool] = await self.redis.zcount(keys.announced, f"({now_ms}", "+inf")
            self._rebuild(pool, now_ms)

    async def _reread(self, pool: str, cnames: Sequence[str], now_ms: int) -> bool:
        """The announcements of channels the change feed named: announced again, or what they lack changed."""
        keys, known = self.keys[pool], self.known[pool]
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for cname in cnames:
                    pipe.zscore(keys.announced_at, cname)
                    pipe.zscore(keys.announced, cname)
                    pipe.hget(keys.announced_left, cname)
                replies = await pipe.execute()
        changed = False
        for i, cname in enumerate(cnames):
            at, ends, left = replies[3 * i : 3 * i + 3]
            if at is None or ends is None or ends <= now_ms or int(at) > self.read_to[pool]:
                # Not pending (ended, never announced), or beyond the horizon: read when it comes into view.
                changed = known.pop(cname, None) is not None or changed
                continue
            found = Announcement(cname, int(at), int(ends), int(left or 0))
            if known.get(cname) != found:
                known[cname] = found
                changed = True
        return changed

    async def _forget_ended(self, keys: PoolKeys) -> None:
        """Tidy Redis of ended announcements (a few calls at most per round; announce() tidies too)."""
        for _ in range(3):
            _, more = functions.parse_announce_end(
                await functions.aexecute(self.redis, functions.announce_end_call(keys))
            )
            if not more:
                return

    def _rebuild(self, pool: str, now_ms: int) -> None:
        demands, needs = [], []
        for a in self.known[pool].values():
            left = max(0, a.left)
            reason = f"announced {a.cname}"
            # On top of the channel's live entries (beyond_live), and not consumable: what it still lacks is counted
            # in Redis (ridpool_add uses one up, a pop lowers the live count, ridpool_reserve never leases more
            # than it lacks), so `left` is already what is left.
            demands.append(planner.Demand(pool, a.cname, left, a.at_ms, a.until_ms, reason, beyond_live=True))
            needs.append(Need(a.cname, a.at_ms, left))
        self.cached[pool] = demands
        late = at_risk(needs, now_ms=now_ms, rate=self.rate)
        upcoming = [d.at_ms for d in demands if d.at_ms > now_ms]
        fields = {
            "announced_pending": str(self.pending.get(pool, len(demands))),
            "announced_next": iso(min(upcoming)) if upcoming else "",
            "announced_at_risk": str(len(late)),
            "announced_at_risk_cnames": ",".join(late[:AT_RISK_SHOWN]),
        }
        if late and self.shown.get(pool, {}).get("announced_at_risk_cnames") != fields["announced_at_risk_cnames"]:
            log.warning("announce.at_risk", pool=pool, at_risk=len(late), cnames=late[:AT_RISK_SHOWN])
        self.shown[pool] = fields

    def demands(self, pool: str, now_ms: int) -> Sequence[planner.Demand]:
        return self.cached.get(pool, [])

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return self.shown.get(pool, {})
