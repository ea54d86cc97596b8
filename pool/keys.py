"""The one home of every Redis key name ridpool uses.

Every key of one pool carries the pool's Cluster hash tag `{pool}`, so the functions that touch several of them
run unchanged on Redis Cluster; account keys share the tag `{acct:NAME}`. Key names are built here and nowhere
else: the daemon, the clients, the tests and the docs all go through these functions.

    PREFIX:{POOL}:meta              hash   published by the daemon: mode, appid, size, max_age_ms, slots, c:<cname>,
                                           owner, fingerprint, identity; e:<cname> the data set (and config
                                           identity) each queue was filled in
    PREFIX:{POOL}:stats             hash   counters: added, pops, misses, expired, refused, acquires, errors, ...
    PREFIX:{POOL}:q                 zset   entries of a template pool (member: msgpack entry, score: expires-at ms)
    PREFIX:{POOL}:q:<cname>         zset   entries of one named channel (cname with % and : percent-encoded)
    PREFIX:{POOL}:q...:ready        list   wake-up tokens for blocking pops on that queue
    PREFIX:{POOL}:inflight          zset   reserved acquires (member: token, score: lease deadline ms)
    PREFIX:{POOL}:uids              zset   uids held by live entries and leases of a uid_range pool
    PREFIX:{POOL}:ledger            zset   sha1 of every ID added while it can live (refuses re-adds)
    PREFIX:{POOL}:starts            hash   starters' reports of `start`: ok/failed by ID age bucket, failure codes
                                           (at most 64 fields + code:other; expires 7 days after the last report)
    PREFIX:{POOL}:hold              string set while the pool backs off after failed acquires (PTTL: how long)
    PREFIX:{POOL}:ann               zset   announced channels of an `announced` pool (member: cname, score: the
                                           server ms its announcement ends, `at` + grace); holds no ID
    PREFIX:{POOL}:ann:at            zset   the same channels scored by `at`, the server ms they are to be ready
    PREFIX:{POOL}:ann:left          hash   cname -> entries still to acquire for its announcement
    PREFIX:{POOL}:ann:queues        zset   announced channels whose queue may hold entries (score: expiry of the
                                           newest); holds no ID
    PREFIX:{POOL}:changes           zset   the daemon's change feed: channel -> server ms of its last pop or
                                           announcement (named and announced pools); holds no ID, trimmed
    PREFIX:{POOL}:baselines         hash   a consumable window's start (server ms) -> the pool's pops counter then
    PREFIX:{POOL}:history           hash   per-minute demand counters (minute -> added pops misses expired)
    PREFIX:{POOL}:conflicts         hash   replica -> '<until ms> <message>': replicas whose config for the pool
                                           differs from its live owner's (they do not refill it); holds no ID
    PREFIX:{POOL}:popped:<id>       string the entry one pop took (request id <id>), kept briefly so that the same
                                           call sent again after a lost reply gets it again (expires with its life)
    PREFIX:{acct:NAME}:rate         zset   the account's shared request log (sliding window)
    PREFIX:{acct:NAME}:cooldown     string set after a 429: every replica waits out its PTTL
    PREFIX:{acct:NAME}:turns        zset   starters waiting for a turn (ticket -> its place in line, server us)
    PREFIX:{acct:NAME}:turns:lease  zset   the same tickets -> the server ms by which each must ask again
    PREFIX:{acct:NAME}:refilled     string exists for `refill_max_wait` after a refill's grant (the refills' floor)
    PREFIX:pools                    set    names of the pools ever published
    PREFIX:replicas                 zset   replica id -> last heartbeat (server ms)
    PREFIX:replica:<id>             hash   what a live replica says about itself (expires with its heartbeat)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ridpool.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def check_name(kind: str, name: str) -> str:
    """Return `name` if it can sit inside a hash tag; braces or colons would split or shift the tag."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"{kind} name {name!r} must be 1-64 characters from A-Z a-z 0-9 _ . -")
    return name


def check_prefix(prefix: str) -> str:
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise InvalidArgument(f"key prefix {prefix!r} must be 1-64 characters from A-Z a-z 0-9 _ . : -")
    return prefix


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The keys of one pool; `queue(cname)` names a channel's queue (None: the template pool's one queue)."""

    prefix: str
    pool: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.pool}}}"

    @property
    def meta(self) -> str:
        return f"{self.tag}:meta"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def inflight(self) -> str:
        return f"{self.tag}:inflight"

    @property
    def uids(self) -> str:
        return f"{self.tag}:uids"

    @property
    def ledger(self) -> str:
        return f"{self.tag}:ledger"

    @property
    def starts(self) -> str:
        return f"{self.tag}:starts"

    @property
    def hold(self) -> str:
        return f"{self.tag}:hold"

    @property
    def announced(self) -> str:
        return f"{self.tag}:ann"

    @property
    def announced_at(self) -> str:
        return f"{self.tag}:ann:at"

    @property
    def announced_left(self) -> str:
        return f"{self.tag}:ann:left"

    @property
    def announced_queues(self) -> str:
        return f"{self.tag}:ann:queues"

    @property
    def changes(self) -> str:
        return f"{self.tag}:changes"

    @property
    def baselines(self) -> str:
        return f"{self.tag}:baselines"

    @property
    def history(self) -> str:
        return f"{self.tag}:history"

    @property
    def conflicts(self) -> str:
        return f"{self.tag}:conflicts"

    def queue(self, cname: str | None) -> str:
        return f"{self.tag}:q" if cname is None else f"{self.tag}:q:{encode_cname(cname)}"

    def ready(self, cname: str | None) -> str:
        return f"{self.queue(cname)}:ready"

    def popped(self, request_id: str) -> str:
        """Where the pop with this request id keeps its entry for a retry (see ridpool_pop's KEYS[6])."""
        return f"{self.tag}:popped:{request_id}"


def encode_cname(cname: str) -> str:
    """A channel name as it appears in a key: '%' and ':' percent-encoded, so that no channel's queue can be
    another's wake-up list (channels "room" and "room:ready") and the key stays readable."""
    return cname.replace("%", "%25").replace(":", "%3A")


@functools.lru_cache(maxsize=4096)
def pool_keys(prefix: str, pool: str) -> PoolKeys:
    """The keys of one pool (cached: built and checked once per pool name, not on every pop)."""
    return PoolKeys(check_prefix(prefix), check_name("pool", pool))


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The keys of one Agora account's shared request budget."""

    prefix: str
    account: str

    @property
    def rate(self) -> str:
        return f"{self.prefix}:{{acct:{self.account}}}:rate"

    @property
    def cooldown(self) -> str:
        return f"{self.prefix}:{{acct:{self.account}}}:cooldown"

    @property
    def turns(self) -> str:
        return f"{self.prefix}:{{acct:{self.account}}}:turns"

    @property
    def turns_lease(self) -> str:
        return f"{self.prefix}:{{acct:{self.account}}}:turns:lease"

    @property
    def refilled(self) -> str:
        return f"{self.prefix}:{{acct:{self.account}}}:refilled"


def account_keys(prefix: str, account: str) -> AccountKeys:
    return AccountKeys(check_prefix(prefix), check_name("account", account))


def registry(prefix: str) -> str:
    return f"{prefix}:pools"


def replicas(prefix: str) -> str:
    return f"{prefix}:replicas"


def replica(prefix: str, replica_id: str) -> str:
    return f"{prefix}:replica:{replica_id}"
