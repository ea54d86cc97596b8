"""What a starter borrows from the daemon: `pop_or_acquire`'s on-demand acquirer (the `daemon` extra: httpx and
the Agora client), driven from the sync client on one background event loop shared by its threads, and the
account budget's window for the starter's own start/query/stop calls.

The work itself (pop, else acquire within the shared budget) is written once, in `ridpool.daemon.ondemand`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ridpool.errors import InvalidArgument, MissingExtra
from ridpool.keys import AccountKeys, account_keys

if TYPE_CHECKING:
    from ridpool.daemon.config import Config
    from ridpool.daemon.ondemand import OnDemand

T = TypeVar("T")
EXTRA = "pip install 'ridpool[daemon]'"
NEEDS = ("httpx", "pydantic", "structlog", "tenacity")


def check_extra() -> None:
    """Fail in one line, naming what to install, when the daemon's extra is missing."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"pop_or_acquire acquires with ridpool's Agora client, which needs the daemon's extra "
            f"({', '.join(missing)} missing): {EXTRA}"
        )


def check_config(config: Config | None) -> Config:
    if config is None:
        raise InvalidArgument(
            "pop_or_acquire needs the daemon's config (appid, clientRequest, Agora hosts, budget): "
            "make the client with PoolClient.from_config('ridpool.toml')"
        )
    return config


def make(config: Config, client: Any) -> OnDemand:
    """An on-demand acquirer for `config`, with credentials from AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET."""
    check_extra()
    from ridpool.daemon.config import load_credentials
    from ridpool.daemon.ondemand import OnDemand

    return OnDemand(config, load_credentials(), client)


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


def load(config: Config | str | os.PathLike[str]) -> Config:
    """A loaded config as is, or the one at this path (validated: ConfigError lists what is wrong)."""
    if isinstance(config, str | os.PathLike):
        check_extra()
        from ridpool.daemon.config import load_config

        return load_config(config)
    return config


def budget(config: Config | None, prefix: str, *, rate: float | None, account: str | None) -> Budget:
    """The account budget a starter's own Agora calls draw from: the config's (the daemon's), or the one named.

    Give the daemon's `agora.rate_limit` and `agora.account`: the window is then the one the daemon keeps to,
    so starters and daemon together stay within it.
    """
    from ridpool.daemon.limiter import NETWORK_JITTER, window_for  # redis only: fine on the starter's install

    if config is not None:
        rate = config.agora.rate_limit if rate is None else rate
        account = account or config.agora.account
    if rate is None:
        raise InvalidArgument("budget needs rate= (the daemon's agora.rate_limit), or a client made by from_config")
    try:
        window = window_for(rate, config.agora.jitter if config is not None else NETWORK_JITTER)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return Budget(account_keys(prefix, account or "default"), window.limit, window.window_ms)


@dataclass(frozen=True, slots=True)
class Budget:
    keys: AccountKeys
    limit: int
    window_ms: int
