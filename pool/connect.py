"""One way to build a Redis client for ridpool, in each mode Redis runs in: standalone, Cluster or Sentinel.

The clients' `from_url`, the CLI and the daemon all call `connect` / `aconnect`, so TLS, credentials, timeouts
and the mode are read the same way everywhere.

- standalone: `url` names the server (`redis://`, `rediss://` for TLS, `unix://`), with user:password and database.
- cluster: `url` names any node; the client learns the others and follows MOVED. FCALL is routed by its first key
  (all keys of one call share a hash tag), without the extra `COMMAND GETKEYS` round trip redis-py would spend.
- sentinel: `sentinels` ("host:port") name the primary of `service_name`; `url` still gives the scheme (TLS),
  the credentials and the database, and its host:port is ignored. After a failover the next command reaches
  the new primary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.connection import parse_url
from redis.crc import key_slot
from ridpool.errors import InvalidArgument
from ridpool.functions import connection_defaults

Mode = Literal["standalone", "cluster", "sentinel"]
MODES: tuple[Mode, ...] = ("standalone", "cluster", "sentinel")


def _fcall_slot(args: Sequence[Any]) -> int | None:
    """The slot of an FCALL from its first key (args: FCALL, function, numkeys, keys...); None if it has none."""
    if len(args) > 3 and str(args[0]).upper() in ("FCALL", "FCALL_RO") and int(args[2]) > 0:
        return key_slot(_as_bytes(args[3]))
    return None


def _as_bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class Cluster(redis.cluster.RedisCluster):
    """RedisCluster that routes FCALL by its first key locally (one round trip per pop, as on one server)."""

    def determine_slot(self, *args: Any) -> int | None:
        slot = _fcall_slot(args)
        return slot if slot is not None else super().determine_slot(*args)


class AsyncCluster(redis.asyncio.cluster.RedisCluster):
    """The asyncio twin of `Cluster`."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        slot = _fcall_slot((command, *args))
        return slot if slot is not None else await super()._determine_slot(command, *args)


def sentinel_addresses(sentinels: Sequence[str]) -> list[tuple[str, int]]:
    """["host:port", ...] as (host, port) pairs; raises InvalidArgument naming a malformed one."""
    out = []
    for item in sentinels:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"sentinel {item!r} must be host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise InvalidArgument('sentinel mode needs at least one sentinel (sentinels = ["host:port"])')
    return out


def _sentinel_kwargs(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Credentials, database and TLS from the URL, for the primary the sentinels name."""
    options = {k: v for k, v in parse_url(url).items() if k not in ("host", "port", "path", "connection_class")}  # type: ignore[no-untyped-call]
    if url.startswith("rediss://"):
        options["ssl"] = True
    return {**options, **kwargs}


def connect(
    url: str,
    *,
    mode: Mode = "standalone",
    sentinels: Sequence[str] = (),
    service_name: str | None = None,
    **kwargs: Any,
) -> Any:
    """A synchronous client (redis.Redis, or its Cluster twin) for ridpool's keys, with the starter defaults."""
    return _client(url, mode, sentinels, service_name, kwargs, asyncio=False)


def aconnect(
    url: str,
    *,
    mode: Mode = "standalone",
    sentinels: Sequence[str] = (),
    service_name: str | None = None,
    **kwargs: Any,
) -> Any:
    """The asyncio twin of `connect`."""
    return _client(url, mode, sentinels, service_name, kwargs, asyncio=True)


def _client(
    url: str, mode: Mode, sentinels: Sequence[str], service_name: str | None, kwargs: dict[str, Any], *, asyncio: bool
) -> Any:
    if mode == "cluster":
        kwargs = connection_defaults(kwargs, asyncio=asyncio)
        kwargs.pop("retry", None)  # RedisCluster keeps its own retry policy (it follows MOVED and failovers)
        kwargs.pop("retry_on_error", None)
        return (AsyncCluster if asyncio else Cluster).from_url(url, **kwargs)
    kwargs = connection_defaults(kwargs, asyncio=asyncio)
    if mode == "sentinel":
        kind = redis.asyncio.sentinel.Sentinel if asyncio else redis.sentinel.Sentinel
        sentinel = kind(
            sentinel_addresses(sentinels),
            sentinel_kwargs={"socket_timeout": kwargs["socket_timeout"]},
            **_sentinel_kwargs(url, kwargs),
        )
        return sentinel.master_for(_service(service_name))
    return (redis.asyncio.Redis if asyncio else redis.Redis).from_url(url, **kwargs)


def _service(name: str | None) -> str:
    if not name:
        raise InvalidArgument("sentinel mode needs service_name (the name the sentinels monitor)")
    return name
