"""The demand-source seam: everything that makes pools want entries, behind one interface.

A source gives the planner and the refill what they need, and nothing else reaches into it:

- `refresh(pool, now_ms, changed)`: read what it needs from Redis for one pool, only what can have changed
  (`changed`: the channels the pool's change feed named since the last round, announcements among them); a
  failure is that pool's alone (the refill skips it this round, logging once per change), the others go on;
- `demands(pool, now_ms)`: what is due and when (`planner.Demand`s): how many entries, from when until when,
  and whether pops use it up (`consumable`). For a consumable demand the refill works out what is left of its
  window itself: the pool's pops since the window began (its baseline, taken in Redis at the instant and shared
  by every replica) are taken off it, earliest window first, so a popped entry is never acquired again; a source
  with an accounting of its own (announcements: what each channel still lacks, in Redis) reports what is left;
- `notes(pool, now_ms)`: fields it wants shown in the pool's stats hash (`next_warmup`, announcements pending).

The daemon builds its sources from factories (`SourceFactory`: the shared Redis client, the config, the timing),
so a new source is one module handed to `Daemon(extra_sources=...)`: the refill loop and the daemon's life cycle
have no branch for any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import redis.asyncio
from ridpool.daemon.announcements import Announcements
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.demand import LearnedSource
from ridpool.daemon.planner import Demand
from ridpool.daemon.warmups import WarmupSource
from ridpool.keys import PoolKeys, pool_keys

if TYPE_CHECKING:
    from ridpool.daemon.service import Timing


class DemandSource(Protocol):
    """See the module docstring."""

    @property
    def pools(self) -> Sequence[str]:
        """The pools it makes demands for (refresh and demands are asked for these only)."""

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None: ...

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]: ...

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source is built from: one replica's Redis client, its config and timing, and every pool's keys."""

    redis: redis.asyncio.Redis
    config: Config
    timing: Timing

    def keys(self, pool: str) -> PoolKeys:
        return pool_keys(self.config.redis.key_prefix, pool)


SourceFactory = Callable[[SourceContext], DemandSource]


def queue_cname(pool: PoolConfig, slot: str) -> str | None:
    """Template pools keep one queue (None); named channels one queue each."""
    return None if pool.is_template else slot


class Standing:
    """The standing size of every configured pool, for every channel, for ever (pops are replaced)."""

    def __init__(self, context: SourceContext) -> None:
        self.each = {p.name: (Demand(p.name, None, p.size, 0, None, "size"),) for p in context.config.pools if p.slots}

    @property
    def pools(self) -> Sequence[str]:
        return list(self.each)

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        return None

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]:
        return self.each[pool]

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return {}


STANDARD: tuple[SourceFactory, ...] = (Standing, WarmupSource, LearnedSource, Announcements)
"""The sources every daemon has: standing sizes, warm-ups, learned demand, announced channels."""
