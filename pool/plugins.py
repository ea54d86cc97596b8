"""Where the starters' library meets what other packages register: the daemon's commands and its acquirer.

Layers point one way: the daemon uses this library, never the reverse. What the `ridpool` command and
`from_config` need of the daemon (its subcommands; an acquirer for `pop_or_acquire` and `start_slot`) the daemon
package registers under two entry-point groups of the `ridpool` distribution, and this module finds them by name
without naming the daemon's modules:

- `ridpool.commands`: each entry point is a `Command` (a subcommand of `ridpool`);
- `ridpool.acquirers`: `agora` is a factory `(config, redis.asyncio client) -> Acquirer` (see `ondemand`).

Entry points are read only when such a command or factory is asked for, so `ridpool pop` pays nothing for them.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from importlib import metadata
from typing import Any, Protocol

from ridpool.errors import MissingExtra

COMMANDS = "ridpool.commands"
ACQUIRERS = "ridpool.acquirers"
DAEMON_EXTRA = "pip install 'ridpool[daemon]'"


class Command(Protocol):
    """A `ridpool` subcommand another package provides."""

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's arguments."""

    def __call__(self, args: argparse.Namespace) -> int:
        """Run it; raise a RidpoolError for the CLI to map to its exit code."""


@functools.cache
def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def commands() -> dict[str, Command]:
    """Every registered subcommand, by name."""
    return {name: ep.load() for name, ep in sorted(_entry_points(COMMANDS).items())}


def acquirer_factory() -> Callable[[Any, Any], Any]:
    """The registered acquirer factory (the daemon's Agora client), or MissingExtra saying what to install."""
    found = _entry_points(ACQUIRERS).get("agora")
    if found is None:
        raise MissingExtra(f"acquiring on the spot needs ridpool's Agora client (the daemon extra): {DAEMON_EXTRA}")
    try:
        factory: Callable[[Any, Any], Any] = found.load()
    except ImportError as exc:
        raise MissingExtra(
            f"acquiring on the spot needs the daemon's dependencies ({exc.name or exc} missing): {DAEMON_EXTRA}"
        ) from None
    return factory
