"""The synchronous client recording starters import: `PoolClient.pop`, `PoolClient.stats`."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio
from ridpool import functions, stats
from ridpool.connect import Mode, connect
from ridpool.entry import Entry
from ridpool.errors import InvalidArgument, PoolEmpty
from ridpool.keys import check_prefix, pool_keys, registry

# A waiting pop blocks on its queue's wake-up list in slices, so it also notices entries added by paths that
# did not signal and never blocks longer than the socket timeout allows.
WAIT_SLICE = 1.0


def wait_slice(client: redis.Redis | redis.asyncio.Redis) -> float:
    """How long one BLPOP of a waiting pop may block: well under the socket timeout, or the read would time out.

    Redis checks blocked clients' timeouts about every 100 ms, so a BLPOP can answer that much late.
    """
    pool = getattr(client, "connection_pool", None)  # a Cluster client has one per node: keep the default slice
    timeout = pool.connection_kwargs.get("socket_timeout") if pool is not None else None
    if timeout is None:
        return WAIT_SLICE
    return max(0.01, min(WAIT_SLICE, float(timeout) / 2, float(timeout) - 0.15))


def check_wait(wait: float) -> float:
    if not (isinstance(wait, int | float) and 0 <= wait <= 300):
        raise InvalidArgument(f"wait must be a number of seconds from 0 to 300, got {wait!r}")
    return float(wait)


class PoolClient:
    """Pops entries from the pools a ridpool daemon keeps in Redis. Thread-safe (redis-py's connection pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "ridpool") -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self._slice = wait_slice(client)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ridpool", mode: Mode = "standalone", **kwargs: Any) -> PoolClient:
        """A client for Redis at `url`; `mode` "cluster" or "sentinel" (with `sentinels=["host:port"]` and
        `service_name`) as `ridpool.connect.connect` describes; other keywords go to redis-py (`ssl_ca_certs`)."""
        return cls(connect(url, mode=mode, **kwargs), prefix=prefix)

    def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """Take the oldest entry with at least `min_ttl` seconds left, waiting up to `wait` seconds for one.

        Raises PoolEmpty when none came, UnknownPool / CnameNotServed for a pool or channel nobody configured,
        PoolUnavailable when Redis cannot be reached.
        """
        keys = pool_keys(self.prefix, pool)
        wait = check_wait(wait)
        deadline = time.monotonic() + wait
        while True:
            last = time.monotonic() >= deadline
            call = functions.pop_call(keys, cname, min_ttl, record_miss=last)
            entry = functions.parse_pop(functions.execute(self.redis, call))
            if entry is not None:
                return entry
            if last:
                raise PoolEmpty(f"pool {pool!r} has no entry with {min_ttl:g} s left" + _for(cname))
            remaining = deadline - time.monotonic()
            if remaining > 0:
                self._block(keys.ready(cname), min(remaining, self._slice))

    def _block(self, key: str, seconds: float) -> None:
        with functions.reaching(self.redis):
            self.redis.blpop([key], timeout=max(seconds, 0.01))

    def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """Tell how `start` went with a popped entry (Agora's error code on failure); returns its age in seconds.

        Counted by the entry's age, so that `stats().starts` shows failure rates by age.
        """
        call = functions.report_call(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code)
        return int(functions.execute(self.redis, call)) / 1000

    def stats(self, pool: str) -> stats.PoolStats:
        keys = pool_keys(self.prefix, pool)
        with functions.reaching(self.redis):
            first = self._pipeline(stats.first_round(keys))
            second = self._pipeline(stats.second_round(keys, first))
        return stats.build(keys, first, second)

    def pools(self) -> list[str]:
        """Names of every pool a daemon has published under this prefix."""
        with functions.reaching(self.redis):
            names = self.redis.smembers(registry(self.prefix))
        return sorted(functions.text(n) for n in names)

    def _pipeline(self, commands: list[tuple[str, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return pipe.execute(raise_on_error=False)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _for(cname: str | None) -> str:
    return f" for cname {cname!r}" if cname else ""
