"""The one capped-doubling backoff of the daemon: a pool's hold after failed acquires, the account's cooldown
after 429s, the pause between attempts to reach a Redis that is down."""

from __future__ import annotations


def doubling(failures_in_a_row: int, first: float, cap: float) -> float:
    """`first` after the first failure, twice as long after each further one in a row, never above `cap`."""
    return float(min(cap, first * 2 ** max(0, failures_in_a_row - 1)))
