"""Prometheus metrics and the health probe: `[metrics] port` serves /metrics (Prometheus text) and /healthz.

Two kinds of figures, told apart in the names' help text:
- pool-wide, read from Redis (what `ridpool status` shows): ready, target, in flight and the counters of each
  pool's stats hash. Every replica exports the same values, taken from a snapshot the daemon refreshes
  (`Timing.observe`); aggregate them across replicas with `max`, never `sum`.
- this replica's, measured in process: how long acquire attempts take and how long they wait for the budget
  (histograms); `sum` them across replicas.

A pool of named channels has one `ready` and one `target` series per channel (label `cname`); every other
series is labelled by `pool` alone. prometheus-client renders the text; the HTTP server is the standard
library's WSGI server on a thread of its own, so a scrape never waits for the event loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from ridpool import ages
from ridpool.daemon.agora import KINDS
from ridpool.errors import RidpoolError
from ridpool.stats import PoolStats, figures

# Every metric the daemon exports (the Grafana dashboard in docs/ may name only these).
POOL_READY = "ridpool_pool_ready"
POOL_TARGET = "ridpool_pool_target"
POOL_IN_FLIGHT = "ridpool_pool_in_flight"
POOL_STATE = "ridpool_pool_state"
POPS = "ridpool_pops_total"
MISSES = "ridpool_misses_total"
EXPIRED_UNUSED = "ridpool_expired_unused_total"
ACQUIRES = "ridpool_acquires_total"
AGORA_ERRORS = "ridpool_agora_errors_total"
AGORA_RATE_LIMITED = "ridpool_agora_rate_limited_total"
ACQUIRE_DURATION = "ridpool_acquire_duration_seconds"
BUDGET_WAIT = "ridpool_budget_wait_seconds"
REDIS_UP = "ridpool_redis_up"
POOL_FORECAST = "ridpool_pool_forecast"
POOL_MAX_AGE = "ridpool_pool_max_age_seconds"
STARTS = "ridpool_starts_total"
NAMES = (
    POOL_READY,
    POOL_TARGET,
    POOL_IN_FLIGHT,
    POOL_STATE,
    POPS,
    MISSES,
    EXPIRED_UNUSED,
    ACQUIRES,
    AGORA_ERRORS,
    AGORA_RATE_LIMITED,
    ACQUIRE_DURATION,
    BUDGET_WAIT,
    REDIS_UP,
    POOL_FORECAST,
    POOL_MAX_AGE,
    STARTS,
)
STATES = ("ok", "retrying", "error", "conflict")
ERROR_FIELD = "errors:"  # stats hash fields `errors:<kind>`: failed acquire attempts by kind
# Agora answers in tens of ms to seconds (10 s client timeouts); the budget makes acquires wait up to seconds.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def errors_by_kind(stats: PoolStats) -> dict[str, int]:
    return {k.removeprefix(ERROR_FIELD): int(v) for k, v in stats.extra.items() if k.startswith(ERROR_FIELD)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What Redis said about every configured pool at the daemon's last look; `reached` False: it did not answer."""

    pools: Sequence[PoolStats] = ()
    reached: bool = False


class PoolCollector(Collector):
    """Renders the latest snapshot of the pools' shared state at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        ready = GaugeMetricFamily(POOL_READY, "Entries ready to pop (pool-wide).", labels=["pool", "cname"])
        target = GaugeMetricFamily(POOL_TARGET, "Entries the refill fills to (pool-wide).", labels=["pool", "cname"])
        in_flight = GaugeMetricFamily(POOL_IN_FLIGHT, "Acquires leased and not finished (pool-wide).", labels=["pool"])
        state = GaugeMetricFamily(POOL_STATE, "1 for the pool's current state (pool-wide).", labels=["pool", "state"])
        # Metric -> the figure it exports (pool/stats.py FIGURES computes every one).
        counters = {
            POPS: ("pops", "Entries handed out (pool-wide)."),
            MISSES: ("misses", "Pops that found nothing fresh enough (pool-wide)."),
            EXPIRED_UNUSED: ("expired_unused", "Entries that died unpopped (pool-wide)."),
            ACQUIRES: ("acquires", "Acquires whose ID was stored (pool-wide)."),
            AGORA_RATE_LIMITED: ("rate_limited", "429 answers from Agora (pool-wide)."),
        }
        families = {name: CounterMetricFamily(name, why, labels=["pool"]) for name, (_, why) in counters.items()}
        forecast = GaugeMetricFamily(
            POOL_FORECAST,
            'Entries learned demand adds (auto_size true) or would add ("forecast") within the planning horizon, '
            "all channels (pool-wide).",
            labels=["pool"],
        )
        max_age = GaugeMetricFamily(
            POOL_MAX_AGE,
            "Seconds an entry is offered after its acquire was sent: the effective max_age with auto_max_age, else "
            "max_age (pool-wide).",
            labels=["pool"],
        )
        starts = CounterMetricFamily(
            STARTS,
            "Starts the starters reported, by outcome and ID age bucket (s); the failure rate over the last hour is "
            'rate(...{outcome="failed"}[1h]) / rate(...[1h]) (pool-wide).',
            labels=["pool", "outcome", "age"],
        )
        errors = CounterMetricFamily(
            AGORA_ERRORS, "Failed acquire attempts by kind, retried or not (pool-wide).", labels=["pool", "kind"]
        )
        for s in snap.pools:
            if not s.known:
                continue
            shown = figures(s)
            if s.mode == "named":
                for channel in s.channels:
                    ready.add_metric([s.pool, channel.cname or ""], channel.size)
                    target.add_metric([s.pool, channel.cname or ""], s.aim_per_channel)
            else:  # a template pool's one queue, an announced pool's channels: no cname label
                ready.add_sample(POOL_READY, {"pool": s.pool}, float(shown["ready"]))
                target.add_sample(POOL_TARGET, {"pool": s.pool}, float(shown["target"]))
            in_flight.add_metric([s.pool], float(shown["in_flight"]))
            for name in STATES:
                state.add_metric([s.pool, name], 1.0 if shown["state"] == name else 0.0)
            for name, (field, _) in counters.items():
                families[name].add_metric([s.pool], float(shown[field]))
            for kind, count in sorted({**dict.fromkeys(KINDS, 0), **errors_by_kind(s)}.items()):
                errors.add_metric([s.pool, kind], count)
            max_age.add_metric([s.pool], s.effective_max_age)
            for outcome in ages.OUTCOMES:  # every bucket, 0 until reported: a series that appears loses no rate
                for edge in ages.EDGES:
                    age = ages.label(edge)
                    starts.add_metric([s.pool, outcome, age], s.starts.get(f"{outcome}:{age}", 0))
            if s.extra.get("forecast", "").isdigit():  # written by the daemon for pools that learn demand
                forecast.add_metric([s.pool], int(s.extra["forecast"]))
        up = GaugeMetricFamily(REDIS_UP, "1 when this replica's last look at Redis succeeded.")
        up.add_metric([], 1.0 if snap.reached else 0.0)
        yield from (ready, target, in_flight, state, forecast, max_age, starts, *families.values(), errors, up)


class Metrics:
    """This replica's metrics: the pool snapshot collector and the in-process histograms, in their own registry
    (so that several daemons in one process, as in the tests, do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self.registry.register(PoolCollector(lambda: self.snapshot))
        self.acquire_duration = Histogram(
            ACQUIRE_DURATION,
            "One HTTP acquire attempt, sent to answered (this replica).",
            ["pool"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.budget_wait = Histogram(
            BUDGET_WAIT,
            "Wait for a grant of the shared budget before an attempt (this replica).",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )


Health = Callable[[], tuple[bool, str]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events worth a log line."""


def app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterator[bytes]]:
    """/metrics (and /) is Prometheus text; /healthz answers 200 or 503 with one line of reason; the rest 404."""
    metrics = make_wsgi_app(registry)

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = environ.get("PATH_INFO")
        if path in ("/metrics", "/"):
            return iter(metrics(environ, start_response))
        if path == "/healthz":
            ok, why = health()
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            status, why = "404 Not Found", "not found: /metrics or /healthz"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return iter([why.encode() + b"\n"])

    return serve


class MetricsServer:
    """The HTTP endpoint on its own thread; `start` fails in one line when the address cannot be bound."""

    def __init__(self, address: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.address, self.port = address, port
        self.registry, self.health = registry, health
        self.server: _Server | None = None

    def start(self) -> MetricsServer:
        try:
            self.server = make_server(
                self.address,
                self.port,
                app(self.registry, self.health),
                _Server6 if ":" in self.address else _Server,
                handler_class=_Quiet,
            )
        except OSError as exc:
            raise RidpoolError(f"metrics: cannot listen on {self.address}:{self.port} ({exc.strerror})") from None
        threading.Thread(target=self.server.serve_forever, name="ridpool-metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
