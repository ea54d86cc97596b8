"""Python side of the function library in `functions.lua`: one builder and one reply parser per function.

A builder returns a `Call` (function name, KEYS, ARGV); the sync and asyncio clients execute it the same way
(`run` / `arun` drive one plan, see below), so the arguments and the reading of replies exist once. Redis error
replies become ridpool exceptions here; a Redis that lost the library (a restart, a FUNCTION FLUSH) gets it
loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import json
import math
import os
import re
import time
import weakref
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar, cast

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
    NotAnnounced,
    OutOfMemory,
    PermissionDenied,
    PoolUnavailable,
    RedisRefused,
    RidpoolError,
    TooManyConnections,
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


def check_pop(cname: str | None, min_ttl: float) -> None:
    """A pop's own arguments, checked before Redis is reached."""
    if not (type(min_ttl) in (int, float) and 0 <= min_ttl < 300):  # NaN fails the comparison
        raise InvalidArgument(f"min_ttl must be a number of seconds from 0 to below 300, got {min_ttl!r}")
    if cname == "":
        raise InvalidArgument("cname must not be empty; leave it out to pop from a template pool")


def request_id() -> str:
    """A pop's request id: random (fork-safe, unlike a counter), so no two pops anywhere share one."""
    return os.urandom(12).hex()


def pop_call(
    keys: PoolKeys, cname: str | None, min_ttl: float, *, record_miss: bool = True, request: str | None = None
) -> Call:
    """`request`: the pop's request id (`request_id()`): the same call sent again after its reply was lost (redis-py
    re-sends it on a timeout or a cut connection) returns the same entry instead of taking another."""
    check_pop(cname, min_ttl)
    base = _pop_keys(keys, cname)
    return Call(
        "ridpool_pop_packed",
        (*base, keys.popped(request)) if request else base,
        (cname or "", math.ceil(min_ttl * 1000), "1" if record_miss else "0"),
    )


@functools.lru_cache(maxsize=4096)
def _pop_keys(keys: PoolKeys, cname: str | None) -> tuple[str, ...]:
    # Built once per channel: every pop's path, where each formatted key name costs.
    return (keys.meta, keys.stats, keys.queue(cname), keys.announced, keys.changes)


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


# -- freshen: the effective max_age (auto_max_age) ----------------------------------------------------------


def freshen_call(
    keys: PoolKeys,
    *,
    fingerprint: str,
    minute: int,
    max_age_ms: int | None,
    since: int = 0,
    probe: str = "",
    share: float = 0.0,
    up_to_ms: int = 0,
    hold_ms: int = 300_000,
    reason: str = "",
) -> Call:
    """Store a pool's effective max_age for `minute` (None: remove the decision, auto_max_age off); see
    ridpool_freshen in functions.lua."""
    return Call(
        "ridpool_freshen",
        (keys.meta,),
        (
            fingerprint,
            minute,
            "off" if max_age_ms is None else max_age_ms,
            since,
            probe,
            repr(float(share)),
            up_to_ms,
            hold_ms,
            reason.encode()[:1000].decode(errors="ignore"),
        ),
    )


def parse_freshen(reply: Any) -> str:
    """'STORED', 'DECIDED' (another replica stored this minute's), 'CONFLICT' (another configuration is
    published) or 'CLEARED'."""
    return text(reply)


# -- add -------------------------------------------------------------------------------------------------


class AddResult(enum.Enum):
    ADDED = "ADDED"
    EXISTS = "EXISTS"  # the same entry was already stored: a retried add
    REFUSED = "REFUSED"  # the ID was stored before and popped: it is never offered twice
    EXPIRED = "EXPIRED"  # past its time already: not stored
    CONFLICT = "CONFLICT"  # acquired under a config identity the pool's owner does not publish: not stored


def add_call(
    keys: PoolKeys,
    entry: Entry,
    *,
    queue_cname: str | None,
    lease: str = "",
    uid: str = "",
    acquired: bool = False,
    identity: str = "",
) -> Call:
    """`acquired`: the daemon stores what its acquire brought (counted in `acquires`, the pool's state ok);
    `identity`: of the config it was acquired under (`PoolMeta.identity`), refused (CONFLICT) unless published."""
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
            keys.announced_left,
            keys.announced_queues,
            keys.changes,
        ),
        (
            encode(entry),
            entry.resource_id,
            entry.expires_at_ms,
            lease,
            uid,
            queue_cname or "",
            "1" if acquired else "",
            identity,
        ),
    )


def parse_add(reply: Any) -> AddResult:
    return AddResult(text(reply))


# -- reserve / release -----------------------------------------------------------------------------------

CHUNK = 1000  # the most items one call of a function takes (functions.lua: CHUNK); callers loop


@dataclass(frozen=True, slots=True)
class Lease:
    """One reserved acquire: release it if the acquire fails, hand it to add when it succeeds."""

    token: str
    uid: str  # '' when the pool's uid is fixed


@dataclass(frozen=True, slots=True)
class Want:
    """What a caller asks ridpool_reserve for one slot: keep `target` ready (of which `consumable` pops use up),
    taking at most `want` leases now."""

    cname: str | None  # None: a template pool's queue
    target: int
    consumable: int = 0
    want: int = 1


@dataclass(frozen=True, slots=True)
class Granted:
    """What ridpool_reserve gave one slot: its live entries (after purging the dead) and the leases taken."""

    live: int
    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class Reserved:
    status: str  # 'OK', 'HELD' (the pool backs off: nothing leased), 'CAP' (the pool's in-flight cap was reached)
    in_flight: int  # the pool's leases after the call, all replicas
    slots: tuple[Granted, ...]  # in the order asked (empty when HELD)


def reserve_call(
    keys: PoolKeys,
    wants: Sequence[Want],
    *,
    cap: int,
    lease_ms: int,
    token_base: str,
    pops_seen: int = 0,
    stale_ms: int = 0,
    uid_candidates: Sequence[int] = (),
) -> Call:
    """Lease for several slots of one pool in one step (at most CHUNK); `pops_seen`: the pool's pops counter when
    the caller planned (the consumable parts of the targets lose the pops since); `stale_ms`: entries with less
    life left are past the pool's effective max_age (auto_max_age), not counted live."""
    if len(wants) > CHUNK:
        raise InvalidArgument(f"reserve takes at most {CHUNK} slots a call, got {len(wants)}")
    args: list[Arg] = [cap, lease_ms, token_base, pops_seen, stale_ms, len(wants)]
    for w in wants:
        args += [w.cname or "", w.target, w.consumable, w.want]
    return Call(
        "ridpool_reserve",
        (keys.inflight, keys.uids, keys.hold, keys.stats, keys.announced_left, *(keys.queue(w.cname) for w in wants)),
        (*args, *uid_candidates),
    )


def parse_reserve(reply: Any) -> Reserved:
    status, in_flight = text(reply[0]), int(reply[1])
    slots: list[Granted] = []
    i = 2
    while i < len(reply):
        live, n = int(reply[i]), int(reply[i + 1])
        pairs = reply[i + 2 : i + 2 + 2 * n]
        leases = tuple(Lease(text(t), text(u)) for t, u in zip(pairs[::2], pairs[1::2], strict=True))
        slots.append(Granted(live, leases))
        i += 2 + 2 * n
    return Reserved(status, in_flight, tuple(slots))


def release_call(keys: PoolKeys, lease: Lease) -> Call:
    return Call("ridpool_release", (keys.inflight, keys.uids), (lease.token, lease.uid))


# -- sweep -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    live: int
    oldest_expires_at_ms: int | None
    dropped: int = 0  # entries dropped now because the queue was filled in another data set (a restore, failover)
    retired: int = 0  # entries of a pending announcement about to expire, retired to be acquired again


@dataclass(frozen=True, slots=True)
class Swept:
    """One ridpool_sweep: server now, the change feed since the caller's mark, and the slots asked about."""

    now_ms: int
    data_set: str  # the serving process's run_id: another one than before means a restore or a failover
    more: bool  # the feed holds more than it returned: ask again from the last score
    changed: tuple[tuple[str, int], ...]  # (slot, server ms of its last change)
    states: tuple[QueueState, ...]  # in the order asked


def sweep_call(
    keys: PoolKeys,
    slots: Sequence[str | None],
    *,
    since_ms: int = -1,
    retire_ms: int = 0,
    keep_ms: int = 60_000,
    stale_ms: int = 0,
) -> Call:
    """`stale_ms`: entries with less life left are past the pool's effective max_age (not counted live)."""
    if len(slots) > CHUNK:
        raise InvalidArgument(f"sweep takes at most {CHUNK} slots a call, got {len(slots)}")
    queues = [k for c in slots for k in (keys.queue(c), keys.ready(c))]
    return Call(
        "ridpool_sweep",
        (keys.meta, keys.stats, keys.changes, keys.announced, keys.announced_left, keys.announced_at, *queues),
        (since_ms, retire_ms, keep_ms, stale_ms, *(c or "" for c in slots)),
    )


def parse_sweep(reply: Any) -> Swept:
    now, data_set, more, n = int(reply[0]), text(reply[1]), bool(int(reply[2])), int(reply[3])
    feed = reply[4 : 4 + 2 * n]
    changed = tuple((text(c), int(float(score))) for c, score in zip(feed[::2], feed[1::2], strict=True))
    rest = [int(x) for x in reply[4 + 2 * n :]]
    states = tuple(
        QueueState(live, None if oldest < 0 else oldest, dropped, retired)
        for live, oldest, dropped, retired in zip(rest[::4], rest[1::4], rest[2::4], rest[3::4], strict=True)
    )
    return Swept(now, data_set, more, changed, states)


def count_call(keys: PoolKeys, slots: Sequence[str | None]) -> Call:
    """Live entries and the oldest of some queues of one pool (at most CHUNK); reads only."""
    if len(slots) > CHUNK:
        raise InvalidArgument(f"count takes at most {CHUNK} queues a call, got {len(slots)}")
    return Call("ridpool_count", tuple(keys.queue(c) for c in slots), ())


def parse_count(reply: Any) -> tuple[int, list[tuple[int, int | None]]]:
    """Server now and, per queue asked, (live entries, expiresAt of the oldest live one or None)."""
    now, rest = int(reply[0]), [int(x) for x in reply[1:]]
    return now, [(live, None if oldest < 0 else oldest) for live, oldest in zip(rest[::2], rest[1::2], strict=True)]


# -- publish ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """What ridpool_publish did: `ok` False when another live replica's different configuration stands."""

    outcome: str  # 'PUBLISHED', 'CURRENT', 'SYNC', 'CONFLICT' or 'RELEASED'
    owner: str

    @property
    def ok(self) -> bool:
        return self.outcome != "CONFLICT"


def fingerprint(fields: Mapping[str, str], channels: Sequence[str]) -> str:
    """What replicas with the same configuration of a pool publish alike: its settings and its channels."""
    stable = {k: v for k, v in sorted(fields.items()) if k != "published_at_ms"}
    return hashlib.sha256(json.dumps([stable, sorted(channels)]).encode()).hexdigest()[:16]


def publish_call(
    keys: PoolKeys, fields: Mapping[str, str], *, owner: str, fingerprint: str, live_ms: int, commit: bool = False
) -> Call:
    """A pool's settings (never its channels: `channels_call`), published if its fingerprint is not already."""
    pairs = [x for item in sorted(fields.items()) for x in item]
    return Call("ridpool_publish", (keys.meta,), (owner, fingerprint, live_ms, "commit" if commit else "check", *pairs))


def channels_call(keys: PoolKeys, how: str, names: Sequence[str]) -> Call:
    """Add or remove channels of a named pool's publication (at most CHUNK a call)."""
    if how not in ("add", "remove") or len(names) > CHUNK:
        raise InvalidArgument(f"channels takes 'add' or 'remove' and at most {CHUNK} names")
    return Call("ridpool_channels", (keys.meta,), (how, *names))


def release_publication_call(keys: PoolKeys, *, owner: str) -> Call:
    """The owner leaving: its publication stops counting as live (see ridpool_publish)."""
    return Call("ridpool_publish", (keys.meta,), (owner, "", 0, "check"))


def conflict_call(keys: PoolKeys, *, replica: str, live_ms: int, message: str = "") -> Call:
    """Say (live_ms > 0) or withdraw (0) that this replica's config for the pool differs from its live owner's."""
    return Call("ridpool_conflict", (keys.conflicts,), (replica, live_ms, message))


def parse_publish(reply: Any) -> Published:
    outcome, owner = (text(x) for x in reply)
    return Published(outcome, owner)


# -- announcements ---------------------------------------------------------------------------------------

MAX_COUNT = 1000


@dataclass(frozen=True, slots=True)
class Announced:
    """What `ridpool_announce` recorded: the instant (server ms) and the end of the announcement (at + grace)."""

    cname: str
    at_ms: int
    until_ms: int


def announce_call(keys: PoolKeys, cname: str, *, at: int | str, count: int = 1) -> Call:
    """`at`: Unix ms by the Redis server's clock, or '+MS' from now (the server's now)."""
    if not (type(count) is int and 1 <= count <= MAX_COUNT):
        raise InvalidArgument(f"count must be an integer from 1 to {MAX_COUNT}, got {count!r}")
    return Call(
        "ridpool_announce",
        (keys.meta, keys.announced, keys.announced_at, keys.announced_left, keys.changes),
        (cname, at, count),
    )


def parse_announce(cname: str, reply: Any) -> Announced:
    at, until = (int(x) for x in reply)
    return Announced(cname, at, until)


@dataclass(frozen=True, slots=True)
class Announcement:
    """A pending announcement as the daemon sees it."""

    cname: str
    at_ms: int
    until_ms: int
    left: int  # entries still to acquire for it


@dataclass(frozen=True, slots=True)
class AnnouncementPage:
    now_ms: int
    pending: int  # announcements pending in the whole pool
    read: int  # entries of the window this page read (page on while it equals the limit)
    found: tuple[Announcement, ...]


def announcements_call(keys: PoolKeys, *, from_ms: int, to_ms: int, offset: int = 0, limit: int = CHUNK) -> Call:
    """The pending announcements whose `at` falls in [from_ms, to_ms], a page at a time; reads only."""
    return Call(
        "ridpool_announcements",
        (keys.announced, keys.announced_at, keys.announced_left),
        (from_ms, to_ms, offset, limit),
    )


def parse_announcements(reply: Any) -> AnnouncementPage:
    now, pending, read, rest = int(reply[0]), int(reply[1]), int(reply[2]), reply[3:]
    found = tuple(
        Announcement(text(c), int(a), int(u), int(n))
        for c, a, u, n in zip(rest[::4], rest[1::4], rest[2::4], rest[3::4], strict=True)
    )
    return AnnouncementPage(now, pending, read, found)


def announce_end_call(keys: PoolKeys) -> Call:
    return Call("ridpool_announce_end", (keys.announced, keys.announced_at, keys.announced_left), ())


def parse_announce_end(reply: Any) -> tuple[int, bool]:
    """How many ended announcements were forgotten, and whether more have ended."""
    return int(reply[0]), bool(int(reply[1]))


# -- demand history --------------------------------------------------------------------------------------


def sample_call(keys: PoolKeys, *, step_ms: int, retention_ms: int, live: int) -> Call:
    """`live`: the pool's live entries now (counted with `count_call`)."""
    return Call("ridpool_sample", (keys.stats, keys.history), (step_ms, retention_ms, live))


def parse_sample(reply: Any) -> int | None:
    """The step written, or None when another replica wrote this one."""
    step = int(reply)
    return None if step < 0 else step


# -- on-demand acquires ----------------------------------------------------------------------------------


def hold_uid_call(keys: PoolKeys, *, hold_ms: int, candidates: Sequence[int]) -> Call:
    return Call("ridpool_hold_uid", (keys.uids,), (hold_ms, *candidates))


# -- the shared budget -----------------------------------------------------------------------------------


# The longest hold or cooldown anyone may set, and the most grants one refill call books (functions.lua's figures).
MAX_WAIT = int(re.search(r"local MAX_WAIT_MS = (\d+)", LIBRARY).group(1)) / 1000  # type: ignore[union-attr]
MAX_BATCH = int(re.search(r"local MAX_BATCH = (\d+)", LIBRARY).group(1))  # type: ignore[union-attr]


def ticket() -> str:
    """A starter's place in line for one request (sent on every ask until granted); random, so fork-safe."""
    return os.urandom(12).hex()


def take_call(keys: AccountKeys, *, limit: int, window_ms: int, ticket: str, use_by_ms: int | None = None) -> Call:
    """A starter's turn (ridpool_take); reply: parse_wait. `use_by_ms`: the server time by which the request must
    go out (a start with a channel's entry: its expiresAt less min_ttl), its place in the line."""
    args: tuple[str | int, ...] = (limit, window_ms, ticket)
    if use_by_ms is not None:
        args += (max(0, use_by_ms),)
    return Call("ridpool_take", (keys.rate, keys.cooldown, keys.turns, keys.turns_lease), args)


def parse_wait(reply: Any) -> float:
    """Seconds to wait (0.0: granted)."""
    return int(reply) / 1000


def take_refills_call(
    keys: AccountKeys, *, limit: int, window_ms: int, call_id: str, count: int, floor_ms: int
) -> Call:
    """Up to `count` grants for the daemon's refills (ridpool_take_refills), after the starters; reply:
    parse_booking."""
    return Call(
        "ridpool_take_refills",
        (keys.rate, keys.cooldown, keys.turns, keys.turns_lease, keys.refilled),
        (limit, window_ms, call_id, max(1, min(count, MAX_BATCH)), floor_ms),
    )


@dataclass(frozen=True, slots=True)
class Booking:
    """What ridpool_take_refills granted: the grants' send times, in seconds after the server's time of the call
    (none: ask again after `wait` seconds)."""

    wait: float
    offsets: tuple[float, ...] = ()


def parse_booking(reply: Any) -> Booking:
    first, *offsets = (int(x) for x in reply)
    if offsets:
        return Booking(0.0, tuple(us / 1e6 for us in offsets))
    return Booking(first / 1000)


def _wait_ms(seconds: float) -> int:
    if not (type(seconds) in (int, float) and 0 < seconds <= MAX_WAIT):
        raise InvalidArgument(
            f"a hold or cooldown must be a number of seconds above 0 up to {MAX_WAIT:g}, got {seconds!r}"
        )
    return max(1, math.ceil(seconds * 1000))


def cooldown_call(keys: AccountKeys, seconds: float) -> Call:
    """Pause the account's budget (every replica and starter) for at least `seconds`, at most MAX_WAIT."""
    return Call("ridpool_cooldown", (keys.cooldown,), (_wait_ms(seconds),))


def hold_call(keys: PoolKeys, seconds: float) -> Call:
    """Hold the pool (no new leases, on any replica) for at least `seconds`, at most MAX_WAIT; reply: parse_wait."""
    return Call("ridpool_hold", (keys.hold,), (_wait_ms(seconds),))


# -- execution -------------------------------------------------------------------------------------------

_ERRORS: dict[str, type[RidpoolError]] = {
    "UNKNOWN_POOL": UnknownPool,
    "CNAME_REQUIRED": CnameNotServed,
    "CNAME_NOT_SERVED": CnameNotServed,
    "BAD_ARGUMENT": InvalidArgument,
    "BAD_ENTRY": CorruptEntry,
    "NOT_ANNOUNCED": NotAnnounced,
    "BAD_CNAME": InvalidArgument,
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
    if isinstance(exc, redis.AuthenticationError) or message.startswith("WRONGPASS"):
        return PermissionDenied(
            f"{subject}: Redis refused the credentials ({message}); check the user and password in the Redis URL "
            "or RIDPOOL_REDIS_PASSWORD"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or _SCRIPT_DENIED.search(message):
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
    if "DB index is out of range" in message:
        # The URL's /N names a database this Redis lacks (`databases`, 16 by default: 0 to 15); a config mistake.
        return InvalidArgument(
            f"{subject}: the Redis URL names a database this Redis does not have ({message}); use a database "
            "from 0 to the server's `databases` setting less one (0 to 15 by default), as in redis://HOST:6379/0"
        )
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
    """Client settings for a starter: fail within about a second when nothing listens, within about 21 s when
    Redis accepts connections and does not answer (5 s read timeout, 4 tries: the README says so), and retry a
    command whose connection turns out stale (after a Redis restart), pipelines included.

    A pop retried this way is sent with its request id, so it returns the entry the first attempt took (see
    `pop_call`); it can never hand one out twice.
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
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return TooManyConnections(
            f"this client's connection pool to Redis at {where(client)} is at its cap ({exc}): as many commands are "
            "in flight as it may open connections; share fewer concurrent calls per client, or raise "
            "max_connections (from_url(..., max_connections=N)); nothing was popped"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.exceptions.ClusterError):
        if not _is_cluster(client):
            # The next connection may reach another server (a restart, a Sentinel failover): check its library
            # again. A Cluster's nodes each answer "function not found" when they lack it (see `fcall`), and a
            # check of every primary after each failure would meet a dead one on every pop.
            _checked.discard(client)
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


def _targets(client: AnyRedis) -> list[dict[str, Any]]:
    """Where the library is checked: the server, or each primary of a Cluster (each holds its own copy)."""
    if _is_cluster(client):
        return [{"target_nodes": node} for node in client.get_primaries()]
    return [{}]


def _needs_load(version: int, where_: str) -> bool:
    if version > LIBRARY_VERSION:
        raise LibraryMismatch(
            f"Redis at {where_} runs ridpool function library version {version}, newer than this client's "
            f"{LIBRARY_VERSION}; upgrade ridpool here (an older client must not replace it)"
        )
    return version < LIBRARY_VERSION


# A Cluster primary that cannot be reached is skipped: its own pools fail on their own (and reload the library
# when they meet "function not found"), the others go on. One dead node must not stop every pool.
_SKIP_NODE = (redis.ConnectionError, redis.TimeoutError)


def check_library(client: AnyRedis) -> None:
    """Load the library where Redis lacks it or holds an older one; refuse a newer one (LibraryMismatch)."""
    cluster = _is_cluster(client)
    for options in _targets(client):
        try:
            try:
                version = int(text(client.execute_command("FCALL", "ridpool_version", 0, **options)))
            except redis.ResponseError as exc:
                if not _missing_library(exc):
                    raise
                version = 0
            if _needs_load(version, where(client)):
                client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY, **options)
        except _SKIP_NODE:
            if not cluster:
                raise
    _checked.add(client)


async def acheck_library(client: AnyRedis) -> None:
    """The asyncio twin of `check_library`."""
    cluster = _is_cluster(client)
    for options in _targets(client):
        try:
            try:
                version = int(text(await client.execute_command("FCALL", "ridpool_version", 0, **options)))
            except redis.ResponseError as exc:
                if not _missing_library(exc):
                    raise
                version = 0
            if _needs_load(version, where(client)):
                await client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY, **options)
        except _SKIP_NODE:
            if not cluster:
                raise
    _checked.add(client)


def load_library(client: redis.Redis) -> None:
    client.function_load(LIBRARY, replace=True)


async def aload_library(client: redis.asyncio.Redis) -> None:
    await client.function_load(LIBRARY, replace=True)


# -- plans and their two drivers -------------------------------------------------------------------------
#
# What a client does is written once, as a plan: a generator that yields Redis commands (a tuple for
# `execute_command`, a list of tuples for a pipeline, whose error replies come back in place), a `Sleep` or a
# `CheckLibrary`, and is sent their replies, or thrown their error replies. A plan does no I/O itself; `run`
# drives it with a sync client and `arun` with an asyncio one (the way stamina drives one retry core from
# `__iter__` and `__aiter__`), so a loop, a retry or a reading of replies exists once.

Command = tuple[Arg | float, ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    """A plan's pause: the sync driver sleeps, the asyncio one awaits asyncio.sleep."""

    seconds: float


@dataclass(frozen=True, slots=True)
class CheckLibrary:
    """A plan's request to (re)load the function library where Redis lacks it (the driver runs `check_library`)."""


Step = Command | list[Command] | Sleep | CheckLibrary
T = TypeVar("T")
Plan = Generator[Step, Any, T]


def fcall(call: Call) -> Plan[Any]:
    """The plan of one FCALL: load the library once if Redis lost it; map error replies to ridpool errors."""
    command: Command = ("FCALL", call.function, len(call.keys), *call.keys, *call.args)
    try:
        try:
            return (yield command)
        except redis.ResponseError as exc:
            if not _missing_library(exc):
                raise
            yield CheckLibrary()
            return (yield command)
    except redis.ResponseError as exc:
        raise _translate(exc, call) from None


class _Cursor(Generic[T]):
    """Where a driver is in a plan: the step to send next (None once the plan has returned) and its result.

    Plain methods, no context manager: this is every pop's path, and each generator frame costs."""

    __slots__ = ("plan", "result", "step")

    def __init__(self, plan: Plan[T]) -> None:
        self.plan = plan
        self.step: Step | None = None
        self.result: T | None = None
        self.send(None)

    def send(self, reply: Any) -> None:
        """Hand the step's reply to the plan; its next step (or its result) becomes current."""
        try:
            self.step = self.plan.send(reply)
        except StopIteration as done:
            self.step, self.result = None, done.value

    def throw(self, error: redis.ResponseError) -> None:
        """Hand the step's error reply to the plan, which may handle it or let it go."""
        try:
            self.step = self.plan.throw(error)
        except StopIteration as done:
            self.step, self.result = None, done.value


def run(client: redis.Redis, plan: Plan[T]) -> T:
    """Drive a plan with a sync client; the library's version is checked once per client (and after a lost
    connection); Redis failures become ridpool errors (`failure`)."""
    try:
        cursor = _Cursor(plan)  # first: a plan's own checks (a bad argument) fail before Redis is reached
        if client not in _checked:
            check_library(client)
        while cursor.step is not None:
            try:
                reply = _send(client, cursor.step)
            except redis.ResponseError as exc:
                cursor.throw(exc)
            else:
                cursor.send(reply)
    except redis.RedisError as exc:
        raise failure(client, exc) from None
    return cast(T, cursor.result)


async def arun(client: redis.asyncio.Redis, plan: Plan[T]) -> T:
    """Drive a plan with an asyncio client: `run`, with the replies awaited."""
    try:
        cursor = _Cursor(plan)  # first: a plan's own checks (a bad argument) fail before Redis is reached
        if client not in _checked:
            await acheck_library(client)
        while cursor.step is not None:
            try:
                reply = await _asend(client, cursor.step)
            except redis.ResponseError as exc:
                cursor.throw(exc)
            else:
                cursor.send(reply)
    except redis.RedisError as exc:
        raise failure(client, exc) from None
    return cast(T, cursor.result)


def _send(client: redis.Redis, step: Step) -> Any:
    if isinstance(step, Sleep):
        return time.sleep(step.seconds)
    if isinstance(step, CheckLibrary):
        return check_library(client)
    if isinstance(step, tuple):
        return client.execute_command(*step)  # type: ignore[no-untyped-call]
    pipe = client.pipeline(transaction=False)
    for command in step:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    return pipe.execute(raise_on_error=False)  # error replies in place: the plan tells a damaged key (stats)


async def _asend(client: redis.asyncio.Redis, step: Step) -> Any:
    if isinstance(step, Sleep):
        return await asyncio.sleep(step.seconds)
    if isinstance(step, CheckLibrary):
        return await acheck_library(client)
    if isinstance(step, tuple):
        return await client.execute_command(*step)  # type: ignore[no-untyped-call]
    pipe = client.pipeline(transaction=False)
    for command in step:
        pipe.execute_command(*command)
    return await pipe.execute(raise_on_error=False)


def execute(client: redis.Redis, call: Call) -> Any:
    """Run one call with a sync client (see `fcall`)."""
    return run(client, fcall(call))


async def aexecute(client: redis.asyncio.Redis, call: Call) -> Any:
    """Run one call with an asyncio client (see `fcall`)."""
    return await arun(client, fcall(call))
