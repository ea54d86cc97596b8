"""Logs an operator can use: every pool event names its pool, rejections are errors, every failed attempt is
counted by kind, and every event name is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from ridpool import AsyncPoolClient
from ridpool.daemon.config import Credentials
from ridpool.testing import Faults, Simulator
from structlog.testing import capture_logs

from tests.daemonkit import CUSTOMER_ID, SECRET, eventually, make_config, rooms_pool, running, web_pool

ROOT = Path(__file__).parent.parent
POOL_EVENTS = ("refill.", "agora.", "pool.")  # every event of these families is about one pool


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=11) as s:
        yield s


@pytest.mark.integration
async def test_every_failed_attempt_is_counted_by_kind_and_every_pool_event_names_its_pool(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """5xx, malformed answers and 429s: `errors` counts each attempt, retried or not, also by kind; every
    refill/agora/pool event carries `pool`."""
    sim.faults = Faults(p_5xx=0.25, p_malformed=0.25, p_429=0.2)
    config = make_config(redis_url, sim.url, web_pool(4), rooms_pool(1), rate_limit=10)
    with capture_logs() as logs:
        async with running(config):
            await eventually(lambda: _filled(aclient), timeout=30, what="both pools full despite faults")
    web, rooms = await aclient.stats("web"), await aclient.stats("rooms")
    s = sim.stats()
    limited = s.rate_limited + s.spurious_429  # the window's and the injected ones
    assert s.spurious_429 > 0  # the seed does inject some
    by_kind = {
        kind: sum(int(p.extra.get(f"errors:{kind}", 0)) for p in (web, rooms))
        for kind in ("transient", "malformed", "rate_limited")
    }
    assert by_kind == {"transient": s.errors_5xx, "malformed": s.malformed, "rate_limited": limited}
    assert web.counters["errors"] + rooms.counters["errors"] == s.errors_5xx + s.malformed + limited
    about_pools = [e for e in logs if e["event"].startswith(POOL_EVENTS)]
    assert about_pools and all(e.get("pool") in ("web", "rooms") for e in about_pools), about_pools
    failures = [e for e in logs if e["event"] == "agora.acquire_failed"]
    assert len(failures) == s.errors_5xx + s.malformed + limited
    assert {e["log_level"] for e in failures} == {"warning"}  # all worth retrying: not an operator's problem


async def _filled(aclient: AsyncPoolClient) -> bool:
    return (await aclient.stats("web")).size == 4 and (await aclient.stats("rooms")).size == 3


@pytest.mark.integration
async def test_a_rejected_request_is_logged_as_an_error_naming_the_pool(redis_url: str, sim: Simulator) -> None:
    """A 401 (wrong secret) is an error-level `agora.acquire_failed` and `refill.failed`, each with `pool`."""
    wrong = Credentials(customer_id=CUSTOMER_ID, customer_secret="wrong-secret-of-16+")  # type: ignore[arg-type]
    with capture_logs() as logs:
        async with running(make_config(redis_url, sim.url, web_pool(1)), credentials=wrong):
            await eventually(lambda: any(e["event"] == "refill.failed" for e in logs), what="the failure")
    rejected = [e for e in logs if e["event"] in ("agora.acquire_failed", "refill.failed")]
    assert {e["event"] for e in rejected} == {"agora.acquire_failed", "refill.failed"}
    assert all(e["log_level"] == "error" and e["pool"] == "web" and e["status"] == 401 for e in rejected)


def test_every_event_the_code_logs_is_documented_in_the_readme() -> None:
    """The README's Logs section names every event name the daemon emits, and RIDPOOL_REDIS_URL."""
    code = "\n".join(p.read_text() for folder in ("pool", "daemon") for p in (ROOT / folder).glob("*.py"))
    events = set(
        re.findall(r"""\b(?:log\.(?:debug|info|warning|error)|_log_failure)\(\s*"([a-z_]+\.[a-z_.]+)\"""", code)
    )
    assert {"pool.summary", "agora.acquire_failed", "refill.failed", "daemon.started"} <= events
    readme = (ROOT / "README.md").read_text()
    logs = readme[readme.index("### Logs") :]
    logs = logs[: logs.index("\n## ", 1) if "\n## " in logs else None]
    missing = sorted(e for e in events if f"`{e}`" not in logs)
    assert not missing, f"events not documented in README's Logs section: {missing}"
    assert "RIDPOOL_REDIS_URL" in readme
