"""The arithmetic of one Agora account's shared request budget, the same for the daemon and every starter.

Why a sliding window of one second plus a margin: `rate_limit` is a ceiling on what Agora sees in *any* one-second
window. Grants spaced evenly at the full rate still reach Agora bunched by the network, and a sliding-window
limiter on Agora's side then counts one too many. So a grant is allowed only when fewer than `limit` were made in
the last `window`, where the window is one second plus a margin for that bunching (`jitter`): any `limit + 1`
requests are then more than a second apart when they arrive, as long as the network delays them by less than the
margin. The cost is a sustained rate of `limit / window` (10/s configured gives 9.5/s).

The log itself is `ridpool_take` in functions.lua; this module only says what limit and window to ask it for, so
that starters (`PoolClient.take`, `start_slot`) and the daemon's acquires keep to one window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ridpool.errors import InvalidArgument
from ridpool.keys import AccountKeys, account_keys

NETWORK_JITTER = 0.05  # default seconds of bunching between two requests on their way to Agora (agora.jitter)
DEFAULT_ACCOUNT = "default"
# Default seconds a refill waits at most behind starters (agora.refill_max_wait): while starters' requests wait
# for the budget, the refills of all replicas together still get one grant this often. About 2% of the default
# sustained rate: a burst of starts ends at most ~1.02x later than with no refill at all.
REFILL_MAX_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Window:
    limit: int  # grants allowed ...
    window_ms: int  # ... in any window this long

    @property
    def sustained(self) -> float:
        return self.limit * 1000 / self.window_ms

    @property
    def spacing(self) -> float:
        """Seconds between two grants at least: 90% of the even spacing (ridpool_take's own figure, server-side)."""
        return 0.9 * self.window_ms / 1000 / self.limit


def window_for(rate: float, jitter: float = NETWORK_JITTER) -> Window:
    """The sliding window that keeps every one-second window at Agora within `rate` (pure: table-tested)."""
    if not (isinstance(rate, int | float) and rate > 0 and math.isfinite(rate)):
        raise InvalidArgument(f"rate must be a positive number, got {rate!r}")
    limit = max(1, math.floor(rate))
    # Below 1/s one request must be 1/rate apart; otherwise floor(rate) per second plus the jitter margin.
    seconds = max(1.0 + jitter, limit / rate)
    return Window(limit, math.ceil(seconds * 1000))


@dataclass(frozen=True, slots=True)
class Account:
    """An Agora account's budget as the daemon's `[agora]` table sets it: `rate_limit`, `jitter`, `account`."""

    rate_limit: float
    name: str = DEFAULT_ACCOUNT
    jitter: float = NETWORK_JITTER

    @property
    def window(self) -> Window:
        return window_for(self.rate_limit, self.jitter)

    def keys(self, prefix: str) -> AccountKeys:
        return account_keys(prefix, self.name)


def resolve(account: Account | None, *, rate: float | None, name: str | None) -> Account:
    """The account a starter's call draws from: the client's (from its config), with `rate` or `name` given for
    this call taking precedence; without either, say what is missing."""
    if rate is None and account is None:
        raise InvalidArgument(
            "the budget needs rate= (the daemon's agora.rate_limit), or a client made by from_config or with account="
        )
    base = account or Account(rate_limit=rate or 1.0)
    chosen = Account(rate if rate is not None else base.rate_limit, name or base.name, base.jitter)
    chosen.window  # noqa: B018 - checks the rate here, where the caller gave it
    return chosen
