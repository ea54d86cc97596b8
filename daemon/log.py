"""Logging: structlog events with stable dotted names; JSON when stderr is not a terminal, readable when it is.

The customer secret is scrubbed from every event as a last line of defence: no code path is meant to log it,
and this makes sure a future one cannot.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"


class Scrub:
    """A structlog processor replacing every occurrence of the given secrets in string values."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self.clean(value)
        return event

    def clean(self, value: Any) -> Any:
        if isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.clean(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self.clean(v) for v in value]
        return value


def configure(
    *, secrets: list[str] | None = None, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    as_json = not stream.isatty() if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            Scrub(secrets or []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their chatter (one line per HTTP request, scheduler
    # skips of a still-running refill round) out of the daemon's event stream.
    logging.basicConfig(stream=stream, level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(logging.ERROR)
