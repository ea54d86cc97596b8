"""Real servers for the tests and the one way tests wait: for a condition, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from ridpool.daemon.localredis import LocalRedis as RedisServer
from ridpool.daemon.localredis import free_port

__all__ = ["RedisServer", "free_port", "wait_for"]


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
