"""ridpool's consumer side: pop pooled Agora Cloud Recording resourceIds from Redis.

    from ridpool import PoolClient, PoolEmpty
    client = PoolClient.from_url("redis://127.0.0.1:6379/0", prefix="ridpool")
    entry = client.pop("rooms", cname="room-2", min_ttl=10.0, wait=2.0)

Where things live: `keys` (every Redis key name), `functions.lua` (the server-side steps, each headed by its
KEYS/ARGV/reply) and `functions` (their Python builders and reply parsers), `entry` (the entry and its msgpack
codec), `client` / `aio` (sync and asyncio clients), `stats` (reading a pool's state), `errors` (one base).
"""

from ridpool.aio import AsyncPoolClient
from ridpool.client import PoolClient
from ridpool.entry import Entry
from ridpool.errors import (
    AcquireFailed,
    CnameNotServed,
    ConfigError,
    CorruptEntry,
    InvalidArgument,
    LibraryMismatch,
    MissingExtra,
    Moved,
    NotAnnounced,
    OutOfMemory,
    PermissionDenied,
    PoolEmpty,
    PoolUnavailable,
    RedisRefused,
    RedisUnreachable,
    RidpoolError,
    TooManyConnections,
    UnknownPool,
    WrongType,
)
from ridpool.functions import Announced
from ridpool.stats import ChannelStats, PoolStats

__all__ = [
    "AcquireFailed",
    "Announced",
    "AsyncPoolClient",
    "ChannelStats",
    "CnameNotServed",
    "ConfigError",
    "CorruptEntry",
    "Entry",
    "InvalidArgument",
    "LibraryMismatch",
    "MissingExtra",
    "Moved",
    "NotAnnounced",
    "OutOfMemory",
    "PermissionDenied",
    "PoolClient",
    "PoolEmpty",
    "PoolStats",
    "PoolUnavailable",
    "RedisRefused",
    "RedisUnreachable",
    "RidpoolError",
    "TooManyConnections",
    "UnknownPool",
    "WrongType",
]
