"""The `ridpool` command: parse, configure logging, call one library function, map the outcome to an exit code.

Only the starter-side commands (pop, announce, status) run on the base install; the daemon's commands import the daemon
inside themselves, so `ridpool pop` pays for no module it does not use, and say which extra to install when it is
missing.

Exit codes (the README lists them): 0 done; 1 unexpected failure; 2 invalid configuration or arguments;
3 the pool has nothing fresh enough; 4 unknown pool or a channel the pool does not serve (or, for announce, a pool
that takes no announcements); 5 Redis unreachable; 6 the Redis user lacks a permission; 7 a key of the pool holds
the wrong type; 8 Redis out of memory; 9 a Cluster addressed as one server (MOVED); 10 Redis holds a newer function
library; 11 Redis may evict keys; 12 an acquire on the spot (pop --or-acquire) failed; 13 `status --check` found a
pool not ok or no live replica.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ridpool import channels, functions, plans
from ridpool.client import PoolClient
from ridpool.errors import (
    AcquireFailed,
    CnameNotServed,
    ConfigError,
    EvictionRisk,
    InvalidArgument,
    LibraryMismatch,
    MissingExtra,
    Moved,
    NotAnnounced,
    OutOfMemory,
    PermissionDenied,
    PoolEmpty,
    PoolUnavailable,
    RidpoolError,
    Unhealthy,
    UnknownPool,
    WrongType,
)
from ridpool.version import installed

if TYPE_CHECKING:
    from ridpool.daemon.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_EMPTY, EXIT_UNKNOWN, EXIT_REDIS = 0, 1, 2, 3, 4, 5
EXIT_PERMISSION, EXIT_WRONG_TYPE, EXIT_OOM, EXIT_MOVED, EXIT_LIBRARY, EXIT_EVICTION = 6, 7, 8, 9, 10, 11
EXIT_ACQUIRE, EXIT_UNHEALTHY = 12, 13
_EXITS: list[tuple[type[RidpoolError], int]] = [
    (ConfigError, EXIT_INVALID),
    (InvalidArgument, EXIT_INVALID),
    (PoolEmpty, EXIT_EMPTY),
    (UnknownPool, EXIT_UNKNOWN),
    (CnameNotServed, EXIT_UNKNOWN),
    (NotAnnounced, EXIT_UNKNOWN),
    (PoolUnavailable, EXIT_REDIS),
    (Unhealthy, EXIT_UNHEALTHY),
    (AcquireFailed, EXIT_ACQUIRE),
    (PermissionDenied, EXIT_PERMISSION),
    (WrongType, EXIT_WRONG_TYPE),
    (OutOfMemory, EXIT_OOM),
    (Moved, EXIT_MOVED),
    (LibraryMismatch, EXIT_LIBRARY),
    (EvictionRisk, EXIT_EVICTION),
]


DAEMON_EXTRA = "pip install 'ridpool[daemon]'"
DAEMON_MODULES = ("apscheduler", "httpx", "pydantic", "structlog", "tenacity", "rich")


def _daemon() -> None:
    """Fail in one line when the daemon's extra is not installed (the starter-side install lacks it)."""
    missing = [name for name in DAEMON_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"needs the daemon's dependencies ({', '.join(missing)} missing): {DAEMON_EXTRA}")


def _number(name: str, low: float, high: float, *, high_included: bool = False) -> Callable[[str], float]:
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
        return _number("--at", 0, plans.MAX_LEAD, high_included=True)(text[1:])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ridpool", description="Pools of fresh Agora Cloud Recording resourceIds.")
    parser.add_argument("--version", action="version", version=f"ridpool {installed()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the refill daemon")
    run.add_argument("-c", "--config", type=Path, required=True)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])

    check = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    check.add_argument("-c", "--config", type=Path, required=True)

    pop = sub.add_parser("pop", help="pop one entry and print it as JSON")
    pop.add_argument("pool")
    pop.add_argument("--cname", help="the channel to record (pools of named channels need it)")
    pop.add_argument("--min-ttl", type=_number("--min-ttl", 0, 300), default=0.0, help="least life left, seconds")
    pop.add_argument(
        "--wait", type=_number("--wait", 0, 300, high_included=True), default=0.0, help="block up to S seconds"
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
        help="print one line and exit 0 if every pool is ok and a replica is live, else 6 (5: Redis unreachable)",
    )

    sim = sub.add_parser("simulate", help="run the built-in Agora acquire simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--rate-limit", type=int, default=10, help="requests per second per customer (Agora: 10)")
    sim.add_argument("--latency", type=_number("--latency", 0, 60), default=0.0, help="mean added latency, s")
    sim.add_argument("--jitter", type=_number("--jitter", 0, 60), default=0.0, help="+- latency jitter, s")
    for fault in ("5xx", "timeout", "malformed", "429", "overload"):
        sim.add_argument(
            f"--p-{fault}",
            type=_number(f"--p-{fault}", 0, 1, high_included=True),
            default=0.0,
            help=f"probability of a {fault} answer",
        )
    sim.add_argument("--seed", type=int, default=None)

    demo = sub.add_parser("demo", help="Redis + simulator + daemon, pools filling and pops, live")
    demo.add_argument("--redis-url", help="use this Redis instead of starting redis-server on a free port")
    demo.add_argument(
        "--duration",
        type=_number("--duration", 0, 86400),
        default=None,
        help="stop after S seconds (default: until Ctrl-C)",
    )
    return parser


def _load_config(path: Path) -> Config:
    _daemon()
    from ridpool.daemon.config import load_config

    return load_config(path)


def _client(args: argparse.Namespace, config: Config | None = None) -> PoolClient:
    """A client for the config's Redis (loaded by the caller, or here from -c), else for --redis-url."""
    if config is None and args.config is not None:
        config = _load_config(args.config)
    if config is not None:
        return PoolClient.from_url(
            config.redis.url, prefix=args.prefix or config.redis.key_prefix, **config.redis.client_kwargs()
        )
    url = args.redis_url or os.environ.get("RIDPOOL_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        return PoolClient.from_url(url, prefix=args.prefix or "ridpool")
    except ValueError as exc:
        # Not the URL itself: it may hold a password.
        raise InvalidArgument(f"--redis-url is not a usable Redis URL ({str(exc).split(':')[0]})") from None


def cmd_pop(args: argparse.Namespace) -> int:
    if args.or_acquire:
        if args.config is None:
            raise InvalidArgument("--or-acquire needs -c FILE: the daemon's config says how to acquire for the pool")
        config = _load_config(args.config)
        from ridpool.daemon import log

        # Events to stderr (stdout is the entry's JSON), warnings and errors only, scrubbed of the secret.
        log.configure(secrets=[os.environ.get("AGORA_CUSTOMER_SECRET", "")], level="warning")
        if args.prefix:
            config = config.model_copy(update={"redis": config.redis.model_copy(update={"key_prefix": args.prefix})})
        with PoolClient.from_config(config) as client:
            entry = client.pop_or_acquire(args.pool, cname=args.cname, min_ttl=args.min_ttl, wait=args.wait)
    else:
        with _client(args) as client:
            entry = client.pop(args.pool, cname=args.cname, min_ttl=args.min_ttl, wait=args.wait)
    print(
        json.dumps(
            {
                "resourceId": entry.resource_id,
                "appid": entry.appid,
                "cname": entry.cname,
                "uid": entry.uid,
                "pool": entry.pool,
                "expiresIn": round((entry.expires_in or 0.0) * 1000),  # ms, as the FCALL reply
                "sentAt": entry.sent_at_ms,
                "expiresAt": entry.expires_at_ms,
                "requestId": entry.request_id,
                "source": entry.source,
            }
        )
    )
    return EXIT_OK


def cmd_announce(args: argparse.Namespace) -> int:
    config = _load_config(args.config) if args.config is not None else None
    if config is not None:
        # The config knows the pool: say what is wrong before touching Redis.
        pool = next((p for p in config.pools if p.name == args.pool), None)
        if pool is None:
            raise UnknownPool(f"pool {args.pool!r} is not in {args.config}")
        if not pool.announced:
            raise NotAnnounced(f"pool {args.pool!r} does not take announcements (set announced = true)")
        if why := channels.problem(args.cname, pool.scene):
            raise InvalidArgument(f"pool {args.pool!r}: cname {args.cname!r} {why}")
    with _client(args, config) as client:
        done = client.announce(args.pool, args.cname, at=args.at, count=args.count)
    print(
        json.dumps(
            {"pool": args.pool, "cname": done.cname, "at": done.at_ms, "until": done.until_ms, "count": args.count}
        )
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from ridpool import status

    config = _load_config(args.config) if args.config is not None else None
    pools = [p.name for p in config.pools] if config else None
    with _client(args, config) as client:
        state = status.gather(client, pools)
    if args.check:
        problems = status.problems(state)
        if problems:
            raise Unhealthy("; ".join(problems))
        print(f"ok: {len(state.pools)} pools ok, {len(state.replicas)} live replicas")
        return EXIT_OK
    print(json.dumps(status.as_json(state), indent=2) if args.json else status.render(state))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    names = ", ".join(f"{p.name} ({'announced' if p.announced else f'{len(p.slots)}x{p.size}'})" for p in config.pools)
    print(f"{args.config}: valid; pools: {names}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    from ridpool.daemon import log
    from ridpool.daemon.config import load_credentials
    from ridpool.daemon.service import Daemon

    credentials = load_credentials()
    as_json = {"auto": None, "json": True, "console": False}[args.log_format]
    log.configure(secrets=[credentials.customer_secret.get_secret_value()], json=as_json, level=args.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Daemon(config, credentials).run(stop)

    asyncio.run(main())
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    _daemon()
    from ridpool.testing import Faults, Simulator, serve_forever

    customer_id = os.environ.get("AGORA_CUSTOMER_ID", "demo-customer")
    secret = os.environ.get("AGORA_CUSTOMER_SECRET", "demo-secret")
    faults = Faults(
        latency=args.latency,
        jitter=args.jitter,
        p_5xx=args.p_5xx,
        p_timeout=args.p_timeout,
        p_malformed=args.p_malformed,
        p_429=args.p_429,
        p_overload=args.p_overload,
    )
    sim = Simulator(
        customer_id=customer_id,
        customer_secret=secret,
        host=args.host,
        port=args.port,
        rate_limit=args.rate_limit,
        faults=faults,
        seed=args.seed,
    )
    serve_forever(sim.start())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    _daemon()
    from ridpool.daemon.demo import run_demo

    return run_demo(redis_url=args.redis_url, duration=args.duration)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "pop": cmd_pop,
    "announce": cmd_announce,
    "status": cmd_status,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RidpoolError as exc:
        print(f"ridpool {args.command}: {exc}", file=sys.stderr)
        return next((code for kind, code in _EXITS if isinstance(exc, kind)), EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
