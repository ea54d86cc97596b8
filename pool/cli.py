"""The `ridpool` command: parse, configure logging, call one library function, map the outcome to an exit code.

The starter-side commands (pop, announce, status) live here and run on the base install. The daemon's commands
(run, check-config, demo, simulate, ...) are registered by the daemon package under the entry-point group
`ridpool.commands` (see `plugins`): this module never imports the daemon, and `ridpool pop` reads no entry point.

Exit codes (the README lists them): 0 done; 1 unexpected failure; 2 invalid configuration or arguments;
3 the pool has nothing fresh enough; 4 unknown pool or a channel the pool does not serve (or, for announce, a pool
that takes no announcements); 5 Redis unreachable; 6 the Redis user lacks a permission; 7 a key of the pool holds
the wrong type; 8 Redis out of memory; 9 a Cluster addressed as one server (MOVED); 10 Redis holds a newer function
library; 11 Redis may evict keys; 12 an acquire on the spot (pop --or-acquire) failed; 13 `status --check` found a
pool not ok (unknown, retrying, error, conflict) or no live replica; 14 the client's own connection pool is at its
cap (too many calls in flight at once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ridpool import channels, functions, plans, plugins, settings
from ridpool.client import PoolClient
from ridpool.errors import (
    AcquireFailed,
    CnameNotServed,
    ConfigError,
    EvictionRisk,
    InvalidArgument,
    LibraryMismatch,
    Moved,
    NotAnnounced,
    OutOfMemory,
    PermissionDenied,
    PoolEmpty,
    PoolUnavailable,
    RidpoolError,
    TooManyConnections,
    Unhealthy,
    UnknownPool,
    WrongType,
)
from ridpool.version import installed

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_EMPTY, EXIT_UNKNOWN, EXIT_REDIS = 0, 1, 2, 3, 4, 5
EXIT_PERMISSION, EXIT_WRONG_TYPE, EXIT_OOM, EXIT_MOVED, EXIT_LIBRARY, EXIT_EVICTION = 6, 7, 8, 9, 10, 11
EXIT_ACQUIRE, EXIT_UNHEALTHY, EXIT_CONNECTIONS = 12, 13, 14
_EXITS: list[tuple[type[RidpoolError], int]] = [
    (ConfigError, EXIT_INVALID),
    (InvalidArgument, EXIT_INVALID),
    (PoolEmpty, EXIT_EMPTY),
    (UnknownPool, EXIT_UNKNOWN),
    (CnameNotServed, EXIT_UNKNOWN),
    (NotAnnounced, EXIT_UNKNOWN),
    (PoolUnavailable, EXIT_REDIS),
    (TooManyConnections, EXIT_CONNECTIONS),
    (Unhealthy, EXIT_UNHEALTHY),
    (AcquireFailed, EXIT_ACQUIRE),
    (PermissionDenied, EXIT_PERMISSION),
    (WrongType, EXIT_WRONG_TYPE),
    (OutOfMemory, EXIT_OOM),
    (Moved, EXIT_MOVED),
    (LibraryMismatch, EXIT_LIBRARY),
    (EvictionRisk, EXIT_EVICTION),
]


def number(name: str, low: float, high: float, *, high_included: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number in [low, high) (or [low, high]) whose error names the option."""
    bound = f"from {low:g} to {high:g}" if high_included else f"from {low:g} to below {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        inside = low <= value <= high if high_included else low <= value < high
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text!r}")
        return value

    return parse


def _instant(text: str) -> datetime | float:
    """--at: '+SECONDS' from now, or an ISO-8601 instant with its offset (a local time would be ambiguous)."""
    if text.startswith("+"):
        return number("--at", 0, plans.MAX_LEAD, high_included=True)(text[1:])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--at must be ISO-8601 with an offset (2026-11-26T09:00:00+01:00) or +SECONDS, got {text!r}"
        ) from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--at needs a UTC offset (such as +00:00 or Z), got {text!r}")
    return at


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= functions.MAX_COUNT:
        raise argparse.ArgumentTypeError(f"--count must be an integer from 1 to {functions.MAX_COUNT}, got {text!r}")
    return int(text)


def _redis_source(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("-c", "--config", type=Path, help="the daemon's TOML config (its [redis] section is used)")
    group.add_argument("--redis-url", help="Redis URL, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default=None, help="key prefix (default: the config's, or 'ridpool')")


STARTER_COMMANDS = ("pop", "announce", "status")


def build_parser(*, plugins_too: bool = True) -> argparse.ArgumentParser:
    """The `ridpool` parser: the starter commands, and (unless `plugins_too` is False) every registered one."""
    parser = argparse.ArgumentParser(prog="ridpool", description="Pools of fresh Agora Cloud Recording resourceIds.")
    parser.add_argument("--version", action="version", version=f"ridpool {installed()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pop = sub.add_parser("pop", help="pop one entry and print it as JSON")
    pop.add_argument("pool")
    pop.add_argument("--cname", help="the channel to record (pools of named channels need it)")
    pop.add_argument("--min-ttl", type=number("--min-ttl", 0, 300), default=0.0, help="least life left, seconds")
    pop.add_argument(
        "--wait", type=number("--wait", 0, 300, high_included=True), default=0.0, help="block up to S seconds"
    )
    pop.add_argument(
        "--or-acquire",
        action="store_true",
        help="when the pool has nothing, acquire on the spot within the shared budget (needs -c and the daemon extra)",
    )
    _redis_source(pop, required=True)

    announce = sub.add_parser("announce", help="announce a channel to be recorded at an instant")
    announce.add_argument("pool")
    announce.add_argument("--cname", required=True, help="the channel that will be recorded")
    announce.add_argument(
        "--at", required=True, type=_instant, help="ISO-8601 with an offset (2026-11-26T09:00:00+01:00) or +SECONDS"
    )
    announce.add_argument("--count", type=_count, default=1, help="entries to have ready then (default 1)")
    _redis_source(announce, required=True)

    status = sub.add_parser("status", help="pools, counters and live replicas")
    _redis_source(status, required=False)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--check",
        action="store_true",
        help=f"print one line; exit codes: {EXIT_OK} every pool ok and a replica live, {EXIT_UNHEALTHY} a pool not ok "
        f"(unknown, retrying, in error or in conflict) or no replica live, {EXIT_REDIS} Redis unreachable, "
        f"{EXIT_PERMISSION} Redis refused the password or a command, {EXIT_INVALID} a bad config or Redis URL",
    )
    if plugins_too:
        for name, command in plugins.commands().items():
            command.configure(sub.add_parser(name, help=command.help))
    return parser


def _settings(args: argparse.Namespace) -> settings.Settings:
    """The starter's settings: from -c FILE (its [redis] and [agora] tables), else --redis-url, else the
    environment, else the default URL; --prefix over the file's key prefix."""
    if args.config is not None:
        found = settings.read(args.config, flag_url=args.redis_url)
    else:
        found = settings.parse({}, flag_url=args.redis_url)
    if args.prefix:
        found = replace(found, redis=replace(found.redis, key_prefix=args.prefix))
    return found


def _client(args: argparse.Namespace) -> PoolClient:
    found = _settings(args)
    try:
        return PoolClient(found.redis.connect(), prefix=found.redis.key_prefix, account=found.account)
    except ValueError as exc:
        # Not the URL itself: it may hold a password.
        raise InvalidArgument(f"the Redis URL is not usable ({str(exc).split(':')[0]})") from None


def _pool_info(args: argparse.Namespace) -> settings.PoolInfo | None:
    """The pool as the -c FILE names it (None without a file); UnknownPool when the file has no such pool."""
    if args.config is None:
        return None
    info = settings.read(args.config, flag_url=args.redis_url).pools.get(args.pool)
    if info is None:
        raise UnknownPool(f"pool {args.pool!r} is not in {args.config}")
    return info


def _quiet_logs() -> None:
    """The acquirer's log events stay out of `pop --or-acquire`'s output: its outcome is the entry printed, or one
    line of error (with Agora's answer and X-Request-Id) and the exit code."""
    with contextlib.suppress(ImportError):  # without the daemon extra, from_config says what to install
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


@contextlib.contextmanager
def _named_prefix(client: PoolClient) -> Iterator[None]:
    """An unknown pool's error names the key prefix used and the pools published under other prefixes."""
    from ridpool import status

    try:
        yield
    except UnknownPool as exc:
        raise UnknownPool(status.with_prefix(client, str(exc))) from None


def cmd_pop(args: argparse.Namespace) -> int:
    if args.or_acquire:
        if args.config is None:
            raise InvalidArgument("--or-acquire needs -c FILE: the daemon's config says how to acquire for the pool")
        if args.prefix or args.redis_url:
            raise InvalidArgument("--or-acquire takes Redis and the key prefix from -c FILE (or RIDPOOL_REDIS_URL)")
        _quiet_logs()
        with PoolClient.from_config(args.config) as client:
            entry = client.pop_or_acquire(args.pool, cname=args.cname, min_ttl=args.min_ttl, wait=args.wait)
    else:
        with _client(args) as client, _named_prefix(client):
            entry = client.pop(args.pool, cname=args.cname, min_ttl=args.min_ttl, wait=args.wait)
    out = {
        "resourceId": entry.resource_id,
        "appid": entry.appid,
        "cname": entry.cname,
        "uid": entry.uid,
        "pool": entry.pool,
        "expiresIn": round((entry.expires_in or 0.0) * 1000),  # ms, as the FCALL reply
        "sentAt": entry.sent_at_ms,
        "expiresAt": entry.expires_at_ms,
        "requestId": entry.request_id,
    }
    if args.or_acquire:
        out["source"] = entry.source
    print(json.dumps(out))
    return EXIT_OK


def cmd_announce(args: argparse.Namespace) -> int:
    pool = _pool_info(args)
    if pool is not None:
        # The config knows the pool: say what is wrong before touching Redis.
        if not pool.announced:
            raise NotAnnounced(f"pool {args.pool!r} does not take announcements (set announced = true)")
        if why := channels.problem(args.cname, pool.scene):
            raise InvalidArgument(f"pool {args.pool!r}: cname {args.cname!r} {why}")
    with _client(args) as client, _named_prefix(client):
        done = client.announce(args.pool, args.cname, at=args.at, count=args.count)
    print(
        json.dumps(
            {"pool": args.pool, "cname": done.cname, "at": done.at_ms, "until": done.until_ms, "count": args.count}
        )
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ridpool import status

    pools = list(settings.read(args.config, flag_url=args.redis_url).pools) if args.config is not None else None
    with _client(args) as client:
        state = status.gather(client, pools)
    if args.check:
        problems = status.problems(state)
        if problems:
            raise Unhealthy("; ".join(problems))
        print(f"ok: {len(state.pools)} pools ok, {len(state.replicas)} live replicas")
        return EXIT_OK
    print(json.dumps(status.as_json(state), indent=2) if args.json else status.render(state))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pop": cmd_pop,
    "announce": cmd_announce,
    "status": cmd_status,
}


def exit_code(exc: RidpoolError) -> int:
    """The documented exit code of an error (the module docstring lists them)."""
    return next((code for kind, code in _EXITS if isinstance(exc, kind)), EXIT_FAILURE)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The starter commands need no entry point: `ridpool pop` reads none.
    parser = build_parser(plugins_too=not (argv and argv[0] in STARTER_COMMANDS))
    args = parser.parse_args(argv)
    run = COMMANDS.get(args.command) or plugins.commands()[args.command]
    try:
        return run(args)
    except RidpoolError as exc:
        print(f"ridpool {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
