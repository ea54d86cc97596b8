"""The last check before a request to Agora leaves: a grant that went stale since it was handed out is not used.

A grant is good for a request sent at once: the budget's window has room for it then, and only then (a request
that leaves late bunches with the grants after it, and Agora's own window counts one too many). Between the grant
and the request's first byte lie a TCP (and TLS) connect and whatever else the process does meanwhile (a busy
CPU, a starved event loop), so the grant is checked again when httpcore is about to write the request's headers
(its `trace` extension): a stale one is replaced by a new grant, taken there. One home for the check: the
daemon's refills and the starters' on-demand acquires both go through it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(slots=True)
class Held:
    """The grant the task's next request to Agora is sent on: when it was handed out (the taker's clock), whether
    it is still good, and how to take another (which returns when that one was handed out)."""

    at: float
    fresh: Callable[[float], bool]
    again: Callable[[Held], Awaitable[float]]


# Per task: the grant of the attempt under way (None: a request not sent on a grant).
_HELD: contextvars.ContextVar[Held | None] = contextvars.ContextVar("ridpool_grant", default=None)


def hold(held: Held | None) -> None:
    """The grant this task's next request is sent on (None once the attempt is over)."""
    _HELD.set(held)


def guard(http: httpx.AsyncClient) -> httpx.AsyncClient:
    """Check every request this client sends on a held grant just before it leaves; returns the client."""
    hooks = http.event_hooks
    if _trace not in hooks["request"]:
        hooks["request"] = [*hooks["request"], _trace]
        http.event_hooks = hooks
    return http


async def _trace(request: httpx.Request) -> None:
    if _HELD.get() is not None:
        request.extensions["trace"] = _sending


async def _sending(event: str, info: dict[str, Any]) -> None:
    # The last step before the request's bytes leave, after any connect.
    if event.endswith(".send_request_headers.started"):
        held = _HELD.get()
        if held is not None and not held.fresh(held.at):
            held.at = await held.again(held)
