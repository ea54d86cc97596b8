"""The I/O-free plans both clients drive: stepped by hand here, with a fake clock, no Redis."""

from __future__ import annotations

from typing import Any

import pytest
from ridpool import plans
from ridpool.errors import PoolEmpty
from ridpool.keys import pool_keys

KEYS = pool_keys("t", "web")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def steps_until_empty(plan: Any, clock: Clock, block_takes: float) -> list[tuple[Any, ...]]:
    """Answer every FCALL with nil and let each BLPOP use up `block_takes` seconds; return the steps seen."""
    seen = [plan.send(None)]
    while True:
        if seen[-1][0] == "BLPOP":
            clock.now += block_takes
        try:
            seen.append(plan.send(None))
        except PoolEmpty:
            return seen


@pytest.mark.parametrize(
    ("wait", "block_takes", "expected"),
    [
        (0.0, 0.0, ["FCALL:0"]),  # no wait: one try, counted as a miss
        (2.5, 1.0, ["FCALL:1", "BLPOP:1", "FCALL:1", "BLPOP:1", "FCALL:1", "BLPOP:0.5", "FCALL:0"]),
        (0.5, 0.5, ["FCALL:1", "BLPOP:0.5", "FCALL:0"]),
    ],
)
def test_a_waiting_pop_blocks_in_slices_and_counts_only_its_last_try_as_a_miss(
    wait: float, block_takes: float, expected: list[str]
) -> None:
    """The pop plan tries, blocks on the wake-up list for at most a slice or what is left, and misses once."""
    clock = Clock()
    plan = plans.pop(KEYS, None, 0.0, wait, slice_seconds=1.0, clock=clock)
    seen = steps_until_empty(plan, clock, block_takes)
    # FCALL:<record_miss is "0"> i.e. 1 = an early try; BLPOP:<seconds>
    shown = [f"FCALL:{1 if s[-1] == '0' else 0}" if s[0] == "FCALL" else f"BLPOP:{s[-1]:g}" for s in seen]
    assert shown == expected


@pytest.mark.parametrize(("timeout", "slice_seconds"), [(None, 1.0), (5.0, 1.0), (1.0, 0.5), (0.1, 0.01)])
def test_a_waiting_pop_never_blocks_longer_than_the_socket_timeout_allows(
    timeout: float | None, slice_seconds: float
) -> None:
    """One BLPOP slice stays well under the socket timeout, so a blocked read never times out."""
    assert plans.wait_slice(timeout) == pytest.approx(slice_seconds)
