"""Never twice across what Redis restarts from: an RDB snapshot, an AOF backup, a lagging replica promoted.

Each test pops some entries, brings back a data set from before those pops, and proves with numbers that none of
the popped IDs is handed out again (duplicates 0), while entries added afterwards are served as usual.
"""

from __future__ import annotations

import shutil

import pytest
import structlog
from ridpool import PoolClient, PoolEmpty
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import RedisProc, processes, wait_for

POOL = "web"


def drain(client: PoolClient) -> list[str]:
    """Pop until the pool is empty; the IDs popped."""
    ids = []
    while True:
        try:
            ids.append(client.pop(POOL).resource_id)
        except PoolEmpty:
            return ids


def served_after(proc: RedisProc, popped: set[str]) -> tuple[int, int]:
    """After a restore: (popped IDs handed out again, fresh entries served out of 3 added)."""
    with PoolClient.from_url(proc.url, prefix=PREFIX) as client:
        again = drain(client)
        r = proc.client()
        fresh = {e.resource_id for e in fill(r, PREFIX, POOL, 3)}
        served = drain(client)
        r.close()
    return len(popped & set(again + served)), len(fresh & set(served))


def test_restart_from_an_rdb_snapshot_hands_out_no_id_popped_after_it() -> None:
    """5 IDs popped after BGSAVE; Redis killed and restarted from dump.rdb: duplicates 0, fresh entries served."""
    proc = RedisProc("--save", "3600 1")
    with processes(proc):
        r = proc.client()
        publish_pool(r, PREFIX, POOL)
        fill(r, PREFIX, POOL, 10)
        with PoolClient.from_url(proc.url, prefix=PREFIX) as client:
            client.pop(POOL)
            r.bgsave()
            wait_for(lambda: r.info("persistence")["rdb_bgsave_in_progress"] == 0 and r.lastsave(), what="BGSAVE")
            popped = {client.pop(POOL).resource_id for _ in range(5)}
        r.close()
        proc.kill()
        proc.start()
        assert proc.client().dbsize() > 0  # the snapshot was loaded, stale entries and all
        assert served_after(proc, popped) == (0, 3)


def test_restore_from_an_aof_backup_hands_out_no_id_popped_after_it() -> None:
    """An AOF copied, 5 IDs popped, the copy restored and Redis restarted from it: duplicates 0."""
    proc = RedisProc("--appendonly", "yes", "--appendfsync", "always")
    with processes(proc):
        r = proc.client()
        publish_pool(r, PREFIX, POOL)
        fill(r, PREFIX, POOL, 10)
        with PoolClient.from_url(proc.url, prefix=PREFIX) as client:
            client.pop(POOL)
            backup = proc.dir / "backup"
            shutil.copytree(proc.dir / "appendonlydir", backup)
            popped = {client.pop(POOL).resource_id for _ in range(5)}
        r.close()
        proc.kill()
        shutil.rmtree(proc.dir / "appendonlydir")
        shutil.copytree(backup, proc.dir / "appendonlydir")
        proc.start()
        assert proc.client().dbsize() > 0
        assert served_after(proc, popped) == (0, 3)


def test_a_lagging_replica_promoted_hands_out_no_id_popped_on_the_old_primary() -> None:
    """The replica cut off (a partition), 5 IDs popped on the primary, the primary killed, the replica promoted
    with the older copy: duplicates 0."""
    primary = RedisProc()
    with processes(primary):
        replica = RedisProc("--replicaof", "127.0.0.1", str(primary.port))
        with processes(replica):
            r, rr = primary.client(), replica.client()
            # A replica that accepts connections may not have synced yet: WAIT below counts only a synced one.
            wait_for(lambda: rr.info("replication")["master_link_status"] == "up", 30, what="the replica synced")
            publish_pool(r, PREFIX, POOL)
            fill(r, PREFIX, POOL, 10)
            with PoolClient.from_url(primary.url, prefix=PREFIX) as client:
                client.pop(POOL)
                assert r.wait(1, 5000) == 1  # in sync up to here
                rr.replicaof("NO", "ONE")  # from here on it lags: it sees none of what follows
                popped = {client.pop(POOL).resource_id for _ in range(5)}
            primary.kill()
            assert rr.zcard(f"{PREFIX}:{{{POOL}}}:q") == 9  # the lagging copy still holds the 5 popped entries
            r.close()
            rr.close()
            assert served_after(replica, popped) == (0, 3)


@pytest.mark.parametrize("restarts", [1, 2])
def test_a_restart_costs_the_ready_entries_once(restarts: int) -> None:
    """What a restart costs: the entries ready at that moment are dropped once, on first use; then pops go on."""
    proc = RedisProc("--save", "3600 1")
    with processes(proc):
        r = proc.client()
        publish_pool(r, PREFIX, POOL)
        for _ in range(restarts):
            fill(r, PREFIX, POOL, 4)
            r.save()
            r.close()
            proc.kill()
            proc.start()
            r = proc.client()
        with PoolClient.from_url(proc.url, prefix=PREFIX) as client:
            assert drain(client) == []
            fill(r, PREFIX, POOL, 2)
            assert len(drain(client)) == 2
        stats = r.hgetall(f"{PREFIX}:{{{POOL}}}:stats")
        r.close()
        assert int(stats[b"pops"]) == 2
        assert int(stats[b"dropped"]) == 4 * restarts  # what each restart cost, counted


async def test_a_running_daemon_drops_the_restored_queue_and_refills_it() -> None:
    """Daemon and starter through a restart from RDB: refill.queue_dropped logged, refilled, duplicates 0."""
    proc = RedisProc("--save", "3600 1")
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    try:
        with processes(proc), structlog.testing.capture_logs() as logs:
            async with running(make_config(proc.url, sim.url, web_pool(3))):
                with PoolClient.from_url(proc.url, prefix=PREFIX) as client:
                    await eventually(lambda: client.stats(POOL).size == 3, 20, "web full")
                    proc.client().save()
                    popped = {client.pop(POOL).resource_id for _ in range(2)}
                    proc.kill()
                    proc.start()
                    await eventually(
                        lambda: any(e["event"] == "refill.queue_dropped" for e in logs), 20, "the drop logged"
                    )
                    await eventually(lambda: client.stats(POOL).size == 3, 20, "web refilled")
                    after = {client.pop(POOL).resource_id for _ in range(3)}
        assert popped.isdisjoint(after) and len(after) == 3
        drops = [e for e in logs if e["event"] == "refill.queue_dropped"]
        assert drops[0]["pool"] == POOL and drops[0]["dropped"] >= 1
    finally:
        sim.stop()
