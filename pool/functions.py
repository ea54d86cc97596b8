"""Python side of the function library in `functions.lua`: one builder and one reply parser per function.

A builder returns a `Call` (function name, KEYS, ARGV); the sync and asyncio clients execute it the same way
(`execute` / `aexecute`), so the arguments and the reading of replies exist once. Redis error replies become
ridpool exceptions here; a Redis that lost the library (a restart, a FUNCTION FLUSH) gets it loaded again.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from ridpool.entry import Entry, decode, encode
from ridpool.errors import (
    CnameNotServed,
    CorruptEntry,
    InvalidArgument,
    LibraryMismatch,
    Moved,
    OutOfMemory,
    PermissionDenied,
    PoolUnavailable,
    RedisRefused,
    RidpoolError,
    UnknownPool,
    WrongType,
)
from ridpool.keys import AccountKeys, PoolKeys

LIBRARY = resources.files("ridpool").joinpath("functions.lua").read_text(encoding="utf-8")
LIBRARY_NAME = "ridpool"

Arg = str | int | bytes


@dataclass(frozen=True, slots=True)
class Call:
    """One FCALL: the function, its KEYS and its ARGV."""

    function: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]


# -- pop -------------------------------------------------------------------------------------------------


def pop_call(keys: PoolKeys, cname: str | None, min_ttl: float, *, record_miss: bool = True) -> Call:
    if not (type(min_ttl) in (int, float) and 0 <= min_ttl < 300):  # NaN fails the comparison
        raise InvalidArgument(f"min_ttl must be a number of seconds from 0 to below 300, got {min_ttl!r}")
    if cname == "":
        raise InvalidArgument("cname must not be empty; leave it out to pop from a template pool")
    return Call(
        "ridpool_pop_packed",
        (keys.meta, keys.stats, keys.queue(cname)),
        (cname or "", math.ceil(min_ttl * 1000), "1" if record_miss else "0"),
    )


def text(value: Any) -> str:
    """A reply value as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_pop(reply: Any) -> Entry | None:
    """Read ridpool_pop_packed's reply: the stored entry and its remaining life in ms."""
    if reply is None:
        return None
    blob, expires_in = reply
    return decode(blob, int(expires_in) / 1000)


# -- report ----------------------------------------------------------------------------------------------


def report_call(keys: PoolKeys, entry: Entry, *, ok: bool, code: int | str | None = None) -> Call:
    return Call(
        "ridpool_report",
        (keys.starts, keys.meta),
        (entry.sent_at_ms, "ok" if ok else "failed", "" if code is None else str(code)),
    )


# -- add -------------------------------------------------------------------------------------------------


class AddResult(enum.Enum):
    ADDED = "ADDED"
    EXISTS = "EXISTS"  # the same entry was already stored: a retried add
    REFUSED = "REFUSED"  # the ID was stored before and popped: it is never offered twice
    EXPIRED = "EXPIRED"  # past its time already: not stored


def add_call(keys: PoolKeys, entry: Entry, *, queue_cname: str | None, lease: str = "", uid: str = "") -> Call:
    return Call(
        "ridpool_add",
        (
            keys.stats,
            keys.ledger,
            keys.queue(queue_cname),
            keys.ready(queue_cname),
            keys.inflight,
            keys.uids,
            keys.meta,
        ),
        (encode(entry), entry.resource_id, entry.expires_at_ms, lease, uid, queue_cname or ""),
    )


def parse_add(reply: Any) -> AddResult:
    return AddResult(text(reply))


# -- reserve / release -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """One reserved acquire: release it if the acquire fails, hand it to add when it succeeds."""

    token: str
    uid: str  # '' when the pool's uid is fixed


def reserve_call(
    keys: PoolKeys,
    *,
    queue_cname: str | None,
    target: int,
    cap: int,
    want: int,
    lease_ms: int,
    token_base: str,
    uid_candidates: Sequence[int] = (),
) -> Call:
    return Call(
        "ridpool_reserve",
        (keys.queue(queue_cname), keys.inflight, keys.uids, keys.hold),
        (queue_cname or "", target, cap, want, lease_ms, token_base, *uid_candidates),
    )


def parse_reserve(reply: Any) -> list[Lease]:
    return [Lease(text(t), text(u)) for t, u in zip(reply[::2], reply[1::2], strict=True)]


def release_call(keys: PoolKeys, lease: Lease) -> Call:
    return Call("ridpool_release", (keys.inflight, keys.uids), (lease.token, lease.uid))


# -- sweep -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    live: int
    now_ms: int
    oldest_expires_at_ms: int | None
    dropped: int = 0  # entries dropped now because the queue was filled in another data set (a restore, failover)


def sweep_call(keys: PoolKeys, queue_cname: str | None) -> Call:
    return Call(
        "ridpool_sweep",
        (keys.queue(queue_cname), keys.meta, keys.ready(queue_cname), keys.stats),
        (queue_cname or "",),
    )


def parse_sweep(reply: Any) -> QueueState:
    live, now, oldest, dropped = (int(x) for x in reply)
    return QueueState(live, now, None if oldest < 0 else oldest, dropped)


# -- publish ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """What ridpool_publish did: `ok` False when another live replica's different configuration stands."""

    ok: bool
    owner: str


def publish_call(keys: PoolKeys, fields: dict[str, str], *, owner: str, live_ms: int) -> Call:
    """Publish a pool's metadata; `fields` minus volatile ones make the fingerprint replicas compare."""
    stable = {k: v for k, v in sorted(fields.items()) if k != "published_at_ms"}
    fingerprint = hashlib.sha256(json.dumps(stable).encode()).hexdigest()[:16]
    pairs = [x for item in stable.items() for x in item]
    return Call("ridpool_publish", (keys.meta,), (owner, fingerprint, live_ms, *pairs))


def release_publication_call(keys: PoolKeys, *, owner: str) -> Call:
    """The owner leaving: its publication stops counting as live (see ridpool_publish)."""
    return Call("ridpool_publish", (keys.meta,), (owner, "", 0))


def parse_publish(reply: Any) -> Published:
    outcome, owner = (text(x) for x in reply)
    return Published(outcome != "CONFLICT", owner)


# -- the shared budget -----------------------------------------------------------------------------------


def take_call(keys: AccountKeys, *, limit: int, window_ms: int, member: str) -> Call:
    return Call("ridpool_take", (keys.rate, keys.cooldown), (limit, window_ms, member))


def parse_wait(reply: Any) -> float:
    """Seconds to wait (0.0: granted)."""
    return int(reply) / 1000


def cooldown_call(keys: AccountKeys, seconds: float) -> Call:
    return Call("ridpool_cooldown", (keys.cooldown,), (max(1, math.ceil(seconds * 1000)),))


# -- execution -------------------------------------------------------------------------------------------

_ERRORS: dict[str, type[RidpoolError]] = {
    "UNKNOWN_POOL": UnknownPool,
    "CNAME_REQUIRED": CnameNotServed,
    "CNAME_NOT_SERVED": CnameNotServed,
    "BAD_ARGUMENT": InvalidArgument,
    "BAD_ENTRY": CorruptEntry,
}
# What Redis says inside a function when the user may not run a command or touch a key (an ERR, not a NOPERM).
_SCRIPT_DENIED = re.compile(r"user executing the script can't (run|access)", re.IGNORECASE)
LIBRARY_VERSION = int(re.search(r"local LIBRARY_VERSION = '(\d+)'", LIBRARY).group(1))  # type: ignore[union-attr]
AnyRedis = Any  # redis.Redis, redis.asyncio.Redis or one of their Cluster twins


def _missing_library(exc: redis.ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def refused(exc: redis.RedisError, subject: str) -> RidpoolError:
    """The ridpool error for an error reply of Redis, naming what it concerned (`subject`)."""
    message = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError | redis.AuthenticationError) or _SCRIPT_DENIED.search(
        message
    ):
        return PermissionDenied(
            f"{subject}: the Redis user is not allowed this ({message}); grant it the ACL the README lists"
        )
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return OutOfMemory(f"{subject}: Redis is out of memory (maxmemory reached) and refuses writes: {message}")
    if isinstance(exc, redis.exceptions.AskError | redis.exceptions.ClusterCrossSlotError):
        where_ = f"Redis Cluster serves this key on another node ({message})"
        return Moved(f'{subject}: {where_}; connect in cluster mode ([redis] mode = "cluster")')
    if message.startswith("WRONGTYPE"):
        return WrongType(f"{subject}: a key holds the wrong type of value, the pool's keys are damaged ({message})")
    code, _, rest = message.partition(" ")
    kind = _ERRORS.get(code)
    if kind is not None:
        return kind(f"{subject}: {rest}")
    return RedisRefused(f"{subject}: Redis refused it: {message}")


def _translate(exc: redis.RedisError, call: Call) -> RidpoolError:
    return refused(exc, _subject(call))


def _subject(call: Call) -> str:
    # Names the pool (and channel) from the key, for messages: "pool 'rooms' (cname 'room-9')".
    first = call.keys[0]
    pool = first[first.find("{") + 1 : first.find("}")]
    if call.function in ("ridpool_pop", "ridpool_pop_packed") and call.args[0]:
        return f"pool {pool!r}, cname {text(call.args[0])!r}"
    return f"pool {pool!r}"


def unavailable(exc: Exception, where: str) -> PoolUnavailable:
    """The error a caller sees when Redis cannot be reached: never confused with an empty pool."""
    return PoolUnavailable(f"Redis at {where} is unavailable ({type(exc).__name__}: {exc})")


def where(client: AnyRedis) -> str:
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a Cluster client: no single server
        return "the Redis Cluster"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    if "service_name" in getattr(pool, "__dict__", {}):
        return f"Sentinel service {pool.service_name!r}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def connection_defaults(kwargs: dict[str, Any], *, asyncio: bool) -> dict[str, Any]:
    """Client settings for a starter: fail within about a second when Redis is down, and retry a command once
    its connection turns out stale (after a Redis restart), pipelines included.

    A pop retried after a lost reply may take a second entry and waste the first; it can never hand one out twice.
    """
    kwargs.setdefault("socket_timeout", 5.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
    kwargs.setdefault("retry", AsyncRetry(backoff, 3) if asyncio else Retry(backoff, 3))
    kwargs.setdefault("retry_on_error", [redis.ConnectionError, redis.TimeoutError])
    return kwargs


def failure(client: AnyRedis, exc: redis.RedisError, subject: str = "") -> RidpoolError:
    """The ridpool error for a failure of redis-py: a lost or timed-out connection is PoolUnavailable naming the
    server, an error reply the RedisRefused subclass that says what it is (about `subject`)."""
    if isinstance(exc, redis.AuthenticationError):
        return refused(exc, subject or f"Redis at {where(client)}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.exceptions.ClusterError):
        _checked.discard(client)  # the next connection may reach another server: check its library again
        return unavailable(exc, where(client))
    if isinstance(exc, redis.ResponseError):
        return refused(exc, subject or f"Redis at {where(client)}")
    return RedisRefused(f"{subject or where(client)}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def reaching(client: AnyRedis) -> Iterator[None]:
    """Turn Redis failures into ridpool errors (sync or async code), as `failure` says."""
    try:
        yield
    except redis.RedisError as exc:
        raise failure(client, exc) from None


# Clients (one connection pool each) whose server's library version was checked: once per pool, again after a
# lost connection.
_checked: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_cluster(client: AnyRedis) -> bool:
    return isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster)


def _versions_call(client: AnyRedis) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # On a Cluster, every primary answers (each holds its own copy of the library).
    if _is_cluster(client):
        return ("FCALL", "ridpool_version", 0), {"target_nodes": redis.RedisCluster.PRIMARIES}
    return ("FCALL", "ridpool_version", 0), {}


def _versions(reply: Any, cluster: bool) -> list[int]:
    values = list(reply.values()) if cluster and isinstance(reply, dict) else [reply]
    return [int(text(v)) for v in values]


def _needs_load(versions: list[int], where_: str) -> bool:
    newer = [v for v in versions if v > LIBRARY_VERSION]
    if newer:
        raise LibraryMismatch(
            f"Redis at {where_} runs ridpool function library version {max(newer)}, newer than this client's "
            f"{LIBRARY_VERSION}; upgrade ridpool here (an older client must not replace it)"
        )
    return any(v < LIBRARY_VERSION for v in versions)


def check_library(client: AnyRedis) -> None:
    """Load the library where Redis lacks it or holds an older one; refuse a newer one (LibraryMismatch)."""
    args, options = _versions_call(client)
    try:
        versions = _versions(client.execute_command(*args, **options), _is_cluster(client))
    except redis.ResponseError as exc:
        if not _missing_library(exc):
            raise
        versions = [0]
    if _needs_load(versions, where(client)):
        load_library(client)
    _checked.add(client)


async def acheck_library(client: AnyRedis) -> None:
    """The asyncio twin of `check_library`."""
    args, options = _versions_call(client)
    try:
        versions = _versions(await client.execute_command(*args, **options), _is_cluster(client))
    except redis.ResponseError as exc:
        if not _missing_library(exc):
            raise
        versions = [0]
    if _needs_load(versions, where(client)):
        await aload_library(client)
    _checked.add(client)


def load_library(client: redis.Redis) -> None:
    client.function_load(LIBRARY, replace=True)


async def aload_library(client: redis.asyncio.Redis) -> None:
    await client.function_load(LIBRARY, replace=True)


def execute(client: redis.Redis, call: Call) -> Any:
    """Run a call; check the library's version once per client, load it if Redis lost it; map failures to
    ridpool errors. (A plain try, not `reaching`: this is every pop's path, and the subject is built only on
    failure.)"""
    try:
        if client not in _checked:
            check_library(client)
        try:
            return client.fcall(call.function, len(call.keys), *call.keys, *call.args)
        except redis.ResponseError as exc:
            if not _missing_library(exc):
                raise
            check_library(client)
            return client.fcall(call.function, len(call.keys), *call.keys, *call.args)
    except redis.RedisError as exc:
        raise failure(client, exc, _subject(call)) from None


async def aexecute(client: redis.asyncio.Redis, call: Call) -> Any:
    """The asyncio twin of `execute`."""
    try:
        if client not in _checked:
            await acheck_library(client)
        try:
            return await client.fcall(call.function, len(call.keys), *call.keys, *call.args)
        except redis.ResponseError as exc:
            if not _missing_library(exc):
                raise
            await acheck_library(client)
            return await client.fcall(call.function, len(call.keys), *call.keys, *call.args)
    except redis.RedisError as exc:
        raise failure(client, exc, _subject(call)) from None
