"""The daemon's subcommands of `ridpool`, registered under the entry-point group `ridpool.commands`.

Importing this module costs only the standard library and the starters' CLI helpers: `ridpool --help` lists these
commands on the base install too, and each one imports what it runs inside itself, saying which extra to install
when that is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ridpool.cli import number
from ridpool.errors import InvalidArgument, MissingExtra
from ridpool.plugins import DAEMON_EXTRA

if TYPE_CHECKING:
    from ridpool.daemon.config import Config

NEEDS = ("apscheduler", "httpx", "pydantic", "structlog", "tenacity", "rich", "prometheus_client")


def check_extra() -> None:
    """Fail in one line when the daemon's extra is not installed (the starter-side install lacks it)."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"needs the daemon's dependencies ({', '.join(missing)} missing): {DAEMON_EXTRA}")


def load(path: Path) -> Config:
    check_extra()
    from ridpool.daemon.config import load_config

    return load_config(path)


@dataclass(frozen=True)
class Run:
    name: str = "run"
    help: str = "run the refill daemon"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", type=Path, required=True)
        parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        parser.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])

    def __call__(self, args: argparse.Namespace) -> int:
        config = load(args.config)
        from ridpool.daemon import log
        from ridpool.daemon.config import load_credentials
        from ridpool.daemon.reload import Reloader
        from ridpool.daemon.service import Daemon

        credentials = load_credentials()
        as_json = {"auto": None, "json": True, "console": False}[args.log_format]
        log.configure(secrets=[credentials.customer_secret.get_secret_value()], json=as_json, level=args.log_level)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            daemon = Daemon(config, credentials)
            loop.add_signal_handler(signal.SIGHUP, Reloader(daemon, args.config).request)
            await daemon.run(stop)

        asyncio.run(main())
        return 0


@dataclass(frozen=True)
class CheckConfig:
    name: str = "check-config"
    help: str = "validate a config file (exit 0 or 2)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", type=Path, required=True)

    def __call__(self, args: argparse.Namespace) -> int:
        config = load(args.config)
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        names = ", ".join(
            f"{p.name} ({'announced' if p.announced else f'{len(p.slots)}x{p.size}'})" for p in config.pools
        )
        print(f"{args.config}: valid; pools: {names}")
        return 0


@dataclass(frozen=True)
class Simulate:
    name: str = "simulate"
    help: str = "run the built-in Agora acquire simulator"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)
        parser.add_argument("--rate-limit", type=int, default=10, help="requests per second per customer (Agora: 10)")
        parser.add_argument("--latency", type=number("--latency", 0, 60), default=0.0, help="mean added latency, s")
        parser.add_argument("--jitter", type=number("--jitter", 0, 60), default=0.0, help="+- latency jitter, s")
        for fault in ("5xx", "timeout", "malformed", "429", "overload"):
            parser.add_argument(
                f"--p-{fault}",
                type=number(f"--p-{fault}", 0, 1, high_included=True),
                default=0.0,
                help=f"probability of a {fault} answer",
            )
        parser.add_argument(
            "--start-fail-after",
            type=number("--start-fail-after", 0, 300),
            default=0.0,
            help="starts of IDs older than this many seconds fail with --p-start-fail (400 code 433)",
        )
        parser.add_argument(
            "--p-start-fail",
            type=number("--p-start-fail", 0, 1, high_included=True),
            default=0.0,
            help="probability that a start of an ID older than --start-fail-after fails",
        )
        parser.add_argument("--seed", type=int, default=None)

    def __call__(self, args: argparse.Namespace) -> int:
        check_extra()
        from ridpool.testing import Faults, Simulator, serve_forever

        faults = Faults(
            latency=args.latency,
            jitter=args.jitter,
            p_5xx=args.p_5xx,
            p_timeout=args.p_timeout,
            p_malformed=args.p_malformed,
            p_429=args.p_429,
            p_overload=args.p_overload,
            start_fail_after=args.start_fail_after,
            p_start_fail=args.p_start_fail,
        )
        sim = Simulator(
            customer_id=os.environ.get("AGORA_CUSTOMER_ID", "demo-customer"),
            customer_secret=os.environ.get("AGORA_CUSTOMER_SECRET", "demo-secret"),
            host=args.host,
            port=args.port,
            rate_limit=args.rate_limit,
            faults=faults,
            seed=args.seed,
        )
        serve_forever(sim.start())
        return 0


@dataclass(frozen=True)
class Demo:
    name: str = "demo"
    help: str = "Redis + simulator + daemon, pools filling and pops, live"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server on a free port")
        parser.add_argument(
            "--duration",
            type=number("--duration", 0, 86400),
            default=None,
            help="stop after S seconds (default: until Ctrl-C)",
        )

    def __call__(self, args: argparse.Namespace) -> int:
        check_extra()
        from ridpool.daemon.demo import run_demo

        return run_demo(redis_url=args.redis_url, duration=args.duration)


def _instant(text: str) -> datetime:
    """--now: an ISO-8601 instant with its offset (tests and what-ifs plan from it instead of Redis's clock)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--now must be ISO-8601 with an offset, got {text!r}") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--now needs a UTC offset (such as +00:00 or Z), got {text!r}")
    return at


@dataclass(frozen=True)
class Plan:
    name: str = "plan"
    help: str = "show what the daemon plans, minute by minute, without acting (table, --json, --chart)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", type=Path, required=True)
        parser.add_argument(
            "--hours", type=number("--hours", 1, 168, high_included=True), default=24.0, help="how far ahead (24)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--chart", type=Path, help="draw the plan into this PNG file (needs matplotlib)")
        parser.add_argument("--now", type=_instant, help=argparse.SUPPRESS)  # plan from this instant (tests)

    def __call__(self, args: argparse.Namespace) -> int:
        config = load(args.config)
        from ridpool.daemon import planchart, planview

        if args.chart is not None and not planchart.available():
            raise InvalidArgument(f"--chart needs matplotlib, which is not installed: {planchart.CHART_EXTRA}")
        now_ms = None if args.now is None else round(args.now.timestamp() * 1000)
        inputs = planview.gather(config, hours=args.hours, now_ms=now_ms)
        if not inputs.redis:
            print(f"ridpool plan: {inputs.note}", file=sys.stderr)
        view = planview.build(inputs)
        if args.chart is not None:
            planchart.chart(view, args.chart)
        print(json.dumps(planview.as_json(view)) if args.json else planview.render(view))
        return 0


RUN, CHECK_CONFIG, SIMULATE, DEMO, PLAN = Run(), CheckConfig(), Simulate(), Demo(), Plan()
