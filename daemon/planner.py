"""Refill planning as pure functions of counts and clocks: which channel gets the next lease and how long a
pool is held after failures. Table-tested; the refill loop only applies them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ridpool.daemon.backoff import doubling

# A pool whose acquires keep failing is held (no new leases, across replicas) for a while that doubles per
# failure in a row: a wrong secret must not hammer Agora. The cap keeps it to a few attempts a minute.
HOLD_FIRST, HOLD_CAP = 2.0, 20.0


@dataclass(frozen=True, slots=True)
class Slot:
    """One channel of one pool as the planner sees it."""

    pool: str
    cname: str | None  # None: a template pool's single queue
    target: int
    live: int  # entries stored and not past their time
    pending: int = 0  # leases this replica took in the current round

    @property
    def fill(self) -> float:
        return (self.live + self.pending) / self.target if self.target else 1.0

    @property
    def needs(self) -> int:
        return max(0, self.target - self.live - self.pending)


def next_slot(slots: Iterable[Slot]) -> Slot | None:
    """The emptiest slot (relative to its target) that still lacks entries; ties go to the larger deficit."""
    wanting = [s for s in slots if s.needs > 0]
    if not wanting:
        return None
    return min(wanting, key=lambda s: (s.fill, -s.needs, s.pool, s.cname or ""))


def hold_for(consecutive_failures: int) -> float:
    """Seconds a pool is held after its n-th failed acquire in a row (n >= 1)."""
    return doubling(consecutive_failures, HOLD_FIRST, HOLD_CAP)
