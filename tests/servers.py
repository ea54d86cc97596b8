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
    restarted by the tests. Ready once its log says so (works for TLS-only ports, ACL users and sentinels).
    `{port}` in an argument is replaced by the process's port."""

    def __init__(
        self, *args: str, port: int | None = None, sentinel_conf: str | None = None, cluster_bus: bool = False
    ) -> None:
        # A port picked here is free now, not when redis-server binds it (another test's connection can take it
        # meanwhile): until the first start succeeds, a port found taken is replaced; after it, a restart keeps it.
        self.settled = port is not None
        self.port = port or free_port()
        self.bus_port = free_port() if cluster_bus else None
        self.args = list(args)
        self.dir = Path(tempfile.mkdtemp(prefix="ridpool-proc-"))
        self.sentinel_conf = sentinel_conf
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0, attempts: int = 5) -> RedisProc:
        for _ in range(attempts):
            if self._launch(timeout):
                self.settled = True
                return self
            self.port = free_port()
            if self.bus_port is not None:
                self.bus_port = free_port()
        raise AssertionError(f"redis-server found its port taken {attempts} times; see {self.dir}")

    def _launch(self, timeout: float) -> bool:
        """Start the process and wait until it is ready (True), or it exited because its port was taken and the
        port may still change (False). Any other exit, or no readiness by the deadline, fails with the log's tail."""
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
        if self.bus_port is not None:
            command += ["--cluster-port", str(self.bus_port)]
        process = self.process = subprocess.Popen(
            [*command, *(a.replace("{port}", str(self.port)) for a in self.args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marks = (b"Ready to accept connections", b"Sentinel ID is")
        deadline = time.monotonic() + timeout
        while True:
            written = log.read_bytes()[seen:] if log.exists() else b""
            if any(m in written for m in marks):
                return True
            if process.poll() is not None:
                self.process = None
                if b"Address already in use" in written and not self.settled:
                    return False
                tail = written.decode(errors="replace").strip().splitlines()[-3:]
                raise AssertionError(f"redis-server on port {self.port} exited ({process.returncode}): {tail}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for redis-server on port {self.port}")
            time.sleep(0.01)

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
    nodes = [RedisProc(*settings, cluster_bus=True) for _ in range(primaries * (1 + replicas))]
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
