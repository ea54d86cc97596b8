"""Acquiring on the spot, as the starters' library sees it: an `Acquirer` handed to the client, and the one
background event loop on which a sync client drives it.

The acquirer itself (ridpool's Agora client, its retries, host failover and the shared budget; credentials from
AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET) belongs to the daemon package, which registers a factory for it
(`plugins.acquirer_factory`); `from_config` builds it once, eagerly, so the first pop of a burst costs what any
pop costs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from ridpool.entry import Entry
from ridpool.errors import InvalidArgument, RidpoolError

T = TypeVar("T")


class Acquirer(Protocol):
    """Acquires one ID for a pool's (appid, cname, uid) now, within the account's shared budget."""

    def serves(self, pool: str, cname: str | None) -> bool:
        """Whether it may acquire for a channel a pop called not served (an announced pool's new channel)."""

    async def acquire(self, pool: str, cname: str | None, *, granted_at: float | None = None) -> Entry:
        """The ID as an entry with `source == "acquired"`; raises AcquireFailed (or CnameNotServed, UnknownPool).

        `granted_at`: when (time.monotonic) a starter's turn was granted for this acquire (start_slot's turn): its
        first attempt uses that grant while it is fresh; None: every attempt takes a turn of its own."""

    async def warm(self) -> None:
        """Load now what its first acquire would load (from_config calls it), so that the first costs what any does."""

    async def aclose(self) -> None:
        """Close its HTTP connections."""


NO_CONFIG = InvalidArgument(
    "acquiring on the spot needs the daemon's config (appid, clientRequest, Agora hosts, budget): "
    "make the client with PoolClient.from_config('ridpool.toml')"
)


def unavailable(why: RidpoolError | None) -> RidpoolError:
    """What a client without an acquirer raises when asked to acquire: why it has none."""
    return why or NO_CONFIG


class Background:
    """One event loop on a daemon thread, for sync callers: `run` submits a coroutine and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ridpool-ondemand", daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
