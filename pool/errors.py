"""The one exception base of ridpool and its meaningful subclasses.

Every error a user can meet derives from `RidpoolError`, so a CLI or a starter can catch one type. Messages say
what was wrong and what to do about it.
"""

from __future__ import annotations


class RidpoolError(Exception):
    """Base of every error raised by ridpool."""


class PoolEmpty(RidpoolError):
    """The pool holds nothing fresh enough for this pop (try again, or acquire on demand)."""


class UnknownPool(RidpoolError):
    """No daemon ever published this pool name under this key prefix."""


class CnameNotServed(RidpoolError):
    """The pool does not serve the requested channel, or needs one named."""


class NotAnnounced(RidpoolError):
    """The pool does not take announcements (only pools configured with `announced = true` do)."""


class PoolUnavailable(RidpoolError):
    """Redis could not be reached (down, refused, timed out); nothing was popped."""


class TooManyConnections(RidpoolError):
    """The client's own connection pool is at its cap (redis-py's `max_connections`): as many calls are in flight
    as it may open connections. Redis itself was not asked; nothing was popped."""


RedisUnreachable = PoolUnavailable  # the same error, by the name the other Redis errors below go by


class RedisRefused(RidpoolError):
    """Redis was reached and answered with an error; nothing was popped or changed. A subclass says which."""


class PermissionDenied(RedisRefused):
    """The Redis user may not run a command the step needs, or may not touch its keys (see the README's ACL)."""


class WrongType(RedisRefused):
    """A key of the pool holds a value of the wrong type: the pool's keys are damaged (the message names it)."""


class OutOfMemory(RedisRefused):
    """Redis is at its `maxmemory` and refuses writes."""


class Moved(RedisRefused):
    """The key lives on another Cluster node: a cluster addressed as a single server (set [redis] mode)."""


class LibraryMismatch(RedisRefused):
    """Redis holds a newer ridpool function library than this client knows; upgrade the client."""


class EvictionRisk(RidpoolError):
    """Redis may evict keys (`maxmemory-policy`), which would lose the budget, queues and metadata."""


class OwnerConflict(RidpoolError):
    """Another live replica publishes a different configuration for a pool of the same name."""


class ConfigError(RidpoolError):
    """The configuration is invalid; `problems` lists every violation as 'field.path: reason'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class InvalidArgument(RidpoolError, ValueError):
    """An argument given to a client or the CLI is out of range or malformed."""


class CorruptEntry(RidpoolError):
    """Bytes that should hold an entry do not decode as one of a known version."""


class AcquireFailed(RidpoolError):
    """An acquire made on the spot (pop_or_acquire) brought no ID: Agora refused it, or retries ran out."""


class MissingExtra(RidpoolError):
    """A command needs an optional dependency that is not installed (the daemon's extra, say)."""


class Unhealthy(RidpoolError):
    """`ridpool status --check`: a pool is not ok or no replica is live; the message says which, on one line."""
