"""Real servers for the tests and the one way tests wait: for a condition, with a deadline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from ridpool.daemon.localredis import LocalRedis as RedisServer
from ridpool.daemon.localredis import free_port

__all__ = ["RedisProc", "RedisServer", "free_port", "processes", "wait_for"]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> None:
    """Poll `condition` until it is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # a condition that raises is simply not met yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class RedisProc:
    """One redis-server (or sentinel) process with any extra settings, in its own directory, started and
    restarted by the tests. Ready once its log says so (works for TLS-only ports, ACL users and sentinels)."""

    def __init__(self, *args: str, port: int | None = None, sentinel_conf: str | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.dir = Path(tempfile.mkdtemp(prefix="ridpool-proc-"))
        self.sentinel_conf = sentinel_conf
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisProc:
        log = self.dir / "redis.log"
        seen = log.stat().st_size if log.exists() else 0
        if self.sentinel_conf is not None:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():
                conf.write_text(self.sentinel_conf)
            command = ["redis-server", str(conf), "--sentinel"]
        else:
            command = ["redis-server", "--save", "", "--appendonly", "no"]
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--logfile", str(log)]
        self.process = subprocess.Popen([*command, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marks = (b"Ready to accept connections", b"Sentinel ID is")

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, f"exited; see {log}"
            return log.exists() and any(m in log.read_bytes()[seen:] for m in marks)

        wait_for(ready, timeout, what=f"redis-server on port {self.port} to be ready")
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def kill(self) -> None:
        """SIGKILL: nothing saved at exit, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)


@contextlib.contextmanager
def processes(*procs: RedisProc) -> Iterator[list[RedisProc]]:
    """Start the processes in order; kill every one at the end, whatever happened."""
    try:
        yield [p.start() for p in procs]
    finally:
        for p in procs:
            p.kill()


@contextlib.contextmanager
def cluster(primaries: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000) -> Iterator[list[RedisProc]]:
    """A real Redis Cluster on loopback: `primaries` primaries, each with `replicas` replicas, slots spread by
    redis-cli. The nodes come back primaries first (redis-cli's order); a replica fails over once its primary has
    been unreachable for `node_timeout_ms`."""
    settings = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms))
    nodes = [RedisProc(*settings, "--cluster-port", str(free_port())) for _ in range(primaries * (1 + replicas))]
    with processes(*nodes):
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        clients = [n.client() for n in nodes]

        def formed() -> bool:
            if not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
                return False
            # Every replica attached and in sync, so that a failover has something to promote.
            return all(
                c.info("replication")["master_link_status"] == "up"
                for c in clients
                if c.info("replication")["role"] == "slave"
            )

        wait_for(formed, 60, what="cluster ok, replicas in sync")
        for c in clients:
            c.close()
        yield nodes


@contextlib.contextmanager
def sentinel_group(service: str = "mymaster") -> Iterator[tuple[RedisProc, RedisProc, RedisProc]]:
    """A primary, its replica and one Sentinel (quorum 1) watching them, on loopback."""
    primary = RedisProc()
    with processes(primary):
        replica = RedisProc("--replicaof", "127.0.0.1", str(primary.port))
        watcher = RedisProc(
            sentinel_conf=(
                f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 5000\n"
            )
        )
        with processes(replica, watcher):
            with replica.client(decode_responses=True) as r:
                wait_for(lambda: r.info("replication")["master_link_status"] == "up", 30, what="replica synced")
            with watcher.client(decode_responses=True) as w:
                wait_for(
                    lambda: int(w.sentinel_master(service)["num-slaves"]) >= 1,
                    30,
                    what="the sentinel to see the replica",
                )
            yield primary, replica, watcher
