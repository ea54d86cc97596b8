"""The pop contract against a real redis-server: atomic, FIFO, fresh, for the right channel, never twice."""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from ridpool import AsyncPoolClient, CnameNotServed, CorruptEntry, PoolClient, PoolEmpty, PoolUnavailable, UnknownPool
from ridpool.ages import Tally
from ridpool.entry import encode
from ridpool.functions import AddResult
from ridpool.keys import pool_keys

from tests.conftest import PREFIX
from tests.poolkit import add, fill, make_entry, publish_pool, server_ms
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.integration
ROOMS = ("room-1", "room-2", "room-3")


def test_pop_returns_an_entry_with_what_start_needs(r: redis.Redis, client: PoolClient) -> None:
    """A popped entry carries resourceId, appid, cname, uid, pool, request id and its remaining life."""
    publish_pool(r, PREFIX, "web")
    [stored] = fill(r, PREFIX, "web", 1, life=120)
    entry = client.pop("web")
    assert (entry.resource_id, entry.appid, entry.cname, entry.uid, entry.pool, entry.request_id) == (
        stored.resource_id,
        stored.appid,
        stored.cname,
        stored.uid,
        "web",
        stored.request_id,
    )
    assert entry.expires_in is not None and 119 < entry.expires_in <= 120
    assert entry.sent_at_ms == stored.sent_at_ms and entry.expires_at_ms == stored.expires_at_ms


def test_pop_hands_out_the_oldest_entry_first(r: redis.Redis, client: PoolClient) -> None:
    """FIFO by expiry: the entry that dies first is offered first, so the fewest IDs are wasted."""
    publish_pool(r, PREFIX, "web")
    young = make_entry(r, "web", life=200)
    old = make_entry(r, "web", life=100)
    assert add(r, PREFIX, young) is AddResult.ADDED
    assert add(r, PREFIX, old) is AddResult.ADDED
    assert [client.pop("web").resource_id for _ in range(2)] == [old.resource_id, young.resource_id]


def test_pop_never_returns_an_entry_with_less_life_than_asked(r: redis.Redis, client: PoolClient) -> None:
    """An entry with less than min_ttl left is skipped (left for a less demanding caller), never returned."""
    publish_pool(r, PREFIX, "web")
    short = make_entry(r, "web", life=5)
    long = make_entry(r, "web", life=60)
    add(r, PREFIX, short)
    add(r, PREFIX, long)
    assert client.pop("web", min_ttl=10).resource_id == long.resource_id
    with pytest.raises(PoolEmpty):
        client.pop("web", min_ttl=10)
    assert client.pop("web", min_ttl=1).resource_id == short.resource_id


def test_a_lone_entry_too_old_for_the_caller_stays_queued_with_its_expiry(r: redis.Redis, client: PoolClient) -> None:
    """A pop that finds only an entry with too little life leaves it, and its TTL, exactly as they were."""
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1, life=5)
    queue = pool_keys(PREFIX, "web").queue(None)
    with pytest.raises(PoolEmpty):
        client.pop("web", min_ttl=10)
    assert r.zscore(queue, encode(entry)) == entry.expires_at_ms
    assert 0 < r.pttl(queue) <= 5000
    assert client.pop("web").resource_id == entry.resource_id


def test_an_expired_entry_is_never_popped_and_counts_as_expired(r: redis.Redis, client: PoolClient) -> None:
    """Entries past their time are dropped by the pop that meets them and counted as expired unused."""
    publish_pool(r, PREFIX, "web")
    entries = fill(r, PREFIX, "web", 3, life=0.05)
    wait_for(lambda: server_ms(r) > entries[-1].expires_at_ms, what="the entries' time to pass")
    with pytest.raises(PoolEmpty):
        client.pop("web")
    assert client.stats("web").counters["expired"] == 3  # derived: added - pops - live
    assert client.stats("web").counters["misses"] == 1


def test_entries_vanish_from_redis_by_themselves(r: redis.Redis, client: PoolClient) -> None:
    """With no daemon and no pop, Redis forgets every key holding an ID once the IDs' time is up."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 5, life=0.3)
    keys = pool_keys(PREFIX, "web")
    assert r.exists(keys.queue(None), keys.ledger) == 2
    wait_for(
        lambda: r.exists(keys.queue(None), keys.ledger, keys.ready(None)) == 0,
        timeout=5,
        what="the queue, the ledger and the wake-up list to expire",
    )


def test_every_key_holding_an_id_expires_with_its_longest_lived_id(r: redis.Redis, client: PoolClient) -> None:
    """Queue and ledger TTLs are below five minutes and shrink when the longest-lived entry is popped."""
    publish_pool(r, PREFIX, "web")
    keys = pool_keys(PREFIX, "web")
    add(r, PREFIX, make_entry(r, "web", life=100))
    longest = make_entry(r, "web", life=250)
    add(r, PREFIX, longest)
    for key in (keys.queue(None), keys.ledger, keys.ready(None)):
        assert 0 < r.pttl(key) <= 250_000, key
    assert client.pop("web", min_ttl=200).resource_id == longest.resource_id
    assert 0 < r.pttl(keys.queue(None)) <= 100_000
    assert r.pttl(keys.ledger) > 200_000  # the ledger still remembers the popped ID until it dies


def test_an_id_is_refused_once_popped_and_a_retried_add_stores_one_copy(r: redis.Redis, client: PoolClient) -> None:
    """Adding the same entry twice keeps one copy; re-adding a popped ID is refused and counted."""
    publish_pool(r, PREFIX, "web")
    entry = make_entry(r, "web")
    assert add(r, PREFIX, entry) is AddResult.ADDED
    assert add(r, PREFIX, entry) is AddResult.EXISTS
    assert r.zcard(pool_keys(PREFIX, "web").queue(None)) == 1
    assert client.pop("web").resource_id == entry.resource_id
    assert add(r, PREFIX, entry) is AddResult.REFUSED
    again = make_entry(r, "web", rid=entry.resource_id, cname="web-other")
    assert add(r, PREFIX, again) is AddResult.REFUSED
    with pytest.raises(PoolEmpty):
        client.pop("web")
    assert client.stats("web").counters["refused"] == 2


def test_an_entry_already_past_its_time_is_not_stored(r: redis.Redis) -> None:
    """An add that arrives after its entry stopped being offered stores nothing."""
    publish_pool(r, PREFIX, "web")
    assert add(r, PREFIX, make_entry(r, "web", life=-1)) is AddResult.EXPIRED
    assert r.zcard(pool_keys(PREFIX, "web").queue(None)) == 0


def test_popping_by_cname_only_returns_that_channel(r: redis.Redis, client: PoolClient) -> None:
    """A pop for room-2 returns only room-2 entries, then PoolEmpty while other rooms still hold entries."""
    publish_pool(r, PREFIX, "rooms", cnames=ROOMS)
    for _ in range(4):
        for room in ROOMS:
            fill(r, PREFIX, "rooms", 1, cname=room, named=True)
    got = [client.pop("rooms", cname="room-2") for _ in range(4)]
    assert {e.cname for e in got} == {"room-2"}
    with pytest.raises(PoolEmpty):
        client.pop("rooms", cname="room-2")
    assert client.pop("rooms", cname="room-3").cname == "room-3"


@pytest.mark.parametrize(
    ("pool", "cname", "error", "words"),
    [
        ("nobody", None, UnknownPool, "no daemon has published"),
        ("rooms", "room-9", CnameNotServed, "does not serve"),
        ("rooms", None, CnameNotServed, "pop with the cname"),
        ("web", "web-abc", CnameNotServed, "pop without a cname"),
    ],
)
def test_unknown_pools_and_channels_are_errors_of_their_own(
    r: redis.Redis, client: PoolClient, pool: str, cname: str | None, error: type[Exception], words: str
) -> None:
    """A pool or channel nobody configured is a clear error naming it, never PoolEmpty."""
    publish_pool(r, PREFIX, "web")
    publish_pool(r, PREFIX, "rooms", cnames=ROOMS)
    with pytest.raises(error, match=words) as info:
        client.pop(pool, cname=cname)
    assert not isinstance(info.value, PoolEmpty)
    assert repr(pool) in str(info.value)


def test_32_threads_pop_5000_distinct_ids_then_pool_empty(r: redis.Redis, redis_url: str) -> None:
    """32 threads draining one pool of 5,000 get each ID exactly once, then PoolEmpty."""
    publish_pool(r, PREFIX, "web")
    stored = {e.resource_id for e in fill(r, PREFIX, "web", 5000)}
    client = PoolClient.from_url(redis_url, prefix=PREFIX, max_connections=32)

    def drain() -> list[str]:
        got = []
        while True:
            try:
                got.append(client.pop("web").resource_id)
            except PoolEmpty:
                return got

    with ThreadPoolExecutor(32) as ex:
        results = [f.result() for f in [ex.submit(drain) for _ in range(32)]]
    client.close()
    popped = [rid for chunk in results for rid in chunk]
    assert len(popped) == 5000 and set(popped) == stored


async def test_32_tasks_pop_5000_distinct_ids_then_pool_empty(r: redis.Redis, aclient: AsyncPoolClient) -> None:
    """32 asyncio tasks draining one pool of 5,000 get each ID exactly once, then PoolEmpty."""
    publish_pool(r, PREFIX, "web")
    stored = {e.resource_id for e in fill(r, PREFIX, "web", 5000)}

    async def drain() -> list[str]:
        got = []
        while True:
            try:
                got.append((await aclient.pop("web")).resource_id)
            except PoolEmpty:
                return got

    results = await asyncio.gather(*(drain() for _ in range(32)))
    popped = [rid for chunk in results for rid in chunk]
    assert len(popped) == 5000 and set(popped) == stored


def test_a_waiting_pop_gets_an_entry_added_while_it_waits(r: redis.Redis, client: PoolClient) -> None:
    """pop(wait=...) blocks until an entry arrives, without polling, and returns it."""
    publish_pool(r, PREFIX, "web")
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(client.pop("web", wait=10)))
    t.start()
    wait_for(lambda: any(c.get("cmd") == "blpop" for c in r.client_list()), what="the pop to block")
    [entry] = fill(r, PREFIX, "web", 1)
    t.join(timeout=10)
    assert [e.resource_id for e in result] == [entry.resource_id]  # type: ignore[attr-defined]


async def test_an_async_waiting_pop_times_out_with_pool_empty_and_one_miss(
    r: redis.Redis, aclient: AsyncPoolClient
) -> None:
    """A waiting pop that gets nothing raises PoolEmpty after its wait and counts one miss, not one per try."""
    publish_pool(r, PREFIX, "web")
    with pytest.raises(PoolEmpty):
        await aclient.pop("web", wait=0.3)
    assert (await aclient.stats("web")).counters["misses"] == 1


def test_pop_during_a_redis_outage_is_a_connection_error(
    r: redis.Redis, redis_server: RedisServer, client: PoolClient
) -> None:
    """With Redis down a pop raises PoolUnavailable naming the server, never PoolEmpty; it works once back."""
    publish_pool(r, PREFIX, "web")
    redis_server.stop()
    try:
        with pytest.raises(PoolUnavailable, match=f"127.0.0.1:{redis_server.port}"):
            client.pop("web")
    finally:
        redis_server.start()
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    assert client.pop("web").pool == "web"


def test_pop_reloads_a_flushed_function_library(r: redis.Redis, client: PoolClient) -> None:
    """After FUNCTION FLUSH (or a Redis restart) the client loads the library again and pops."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    r.function_flush()
    assert client.pop("web").pool == "web"


def test_stats_count_sizes_pops_and_ages(r: redis.Redis, client: PoolClient) -> None:
    """stats() reports live entries per channel, the oldest entry's age and the pop counters."""
    publish_pool(r, PREFIX, "rooms", cnames=ROOMS, size=3)
    fill(r, PREFIX, "rooms", 2, cname="room-1", named=True, life=270)
    client.pop("rooms", cname="room-1")
    with pytest.raises(PoolEmpty):
        client.pop("rooms", cname="room-2")
    s = client.stats("rooms")
    assert (s.known, s.mode, s.target, s.size) == (True, "named", 3, 1)
    assert [(c.cname, c.size) for c in s.channels] == [("room-1", 1), ("room-2", 0), ("room-3", 0)]
    assert s.counters["pops"] == 1 and s.counters["misses"] == 1 and s.counters["added"] == 2
    assert s.oldest_age is not None and 0 <= s.oldest_age < 5
    assert client.pools() == ["rooms"]


def test_the_readme_redis_cli_fcall_pops(r: redis.Redis, redis_server: RedisServer) -> None:
    """The exact redis-cli FCALL line of the README pops an entry (the contract for other languages)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [line] = [ln for ln in readme.splitlines() if ln.startswith("redis-cli") and "FCALL ridpool_pop" in ln]
    publish_pool(r, "ridpool", "rooms", cnames=ROOMS)
    [entry] = fill(r, "ridpool", "rooms", 1, cname="room-2", named=True)
    argv = shlex.split(line.replace("-p 6379", f"-p {redis_server.port}"))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
    fields = dict(zip(out[::2], out[1::2], strict=True))
    assert fields["resourceId"] == entry.resource_id and fields["cname"] == "room-2"
    assert 0 < int(fields["expiresIn"]) <= 200_000


def test_starters_reports_are_counted_by_the_age_of_the_id(r: redis.Redis, client: PoolClient) -> None:
    """report() counts start outcomes by ID age bucket and failure code, so max_age is tuned on evidence."""
    publish_pool(r, PREFIX, "web")
    fresh, old = fill(r, PREFIX, "web", 2, life=270)
    old = dataclasses.replace(old, sent_at_ms=old.sent_at_ms - 100_000)
    assert 0 <= client.report(fresh, ok=True) < 5
    assert 100 <= client.report(old, ok=False, code=433) < 105
    client.report(fresh, ok=False, code=433)
    s = client.stats("web")
    assert s.starts == {"ok:0-2": 1, "failed:90-120": 1, "failed:0-2": 1, "code:433": 2}
    assert s.starts_hour == {"0-2": Tally(ok=1, failed=1), "90-120": Tally(failed=1)}


async def test_the_async_client_reports_too(r: redis.Redis, aclient: AsyncPoolClient) -> None:
    """AsyncPoolClient.report mirrors the sync one."""
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    await aclient.report(entry, ok=True)
    assert (await aclient.stats("web")).starts == {"ok:0-2": 1}


def test_an_entry_of_an_unknown_version_is_refused_and_left_in_place(r: redis.Redis, client: PoolClient) -> None:
    """A client meeting an entry a newer daemon wrote raises CorruptEntry and does not waste the entry."""
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    queue = pool_keys(PREFIX, "web").queue(None)
    newer = b"\x99\x02" + encode(entry)[2:]
    r.zadd(queue, {newer: entry.expires_at_ms - 1})  # older than the known entry: met first
    with pytest.raises(CorruptEntry, match="unknown format"):
        client.pop("web")
    assert r.zscore(queue, newer) is not None and r.zcard(queue) == 2
