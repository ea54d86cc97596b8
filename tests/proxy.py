"""A loopback TCP proxy for fault injection between a client and Redis: pass traffic, hold replies, or cut.

It runs its own asyncio loop on a thread, so synchronous clients (which block) and asyncio clients (on the
test's loop) can both be put behind it. Modes are switched from the test while traffic flows:

    with Proxy(redis_port) as proxy:
        client = PoolClient.from_url(proxy.url, socket_timeout=0.3)
        proxy.delay(2.0)       # every reply from Redis reaches the client 2 s late
        proxy.cut()            # every open connection is reset; new ones are closed at once
        proxy.passthrough()    # traffic flows normally again (to new connections)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


class Commands:
    """Counts the commands a client sends (RESP arrays of bulk strings, the only form clients send), across
    chunks: a command split over several reads counts once, when it is complete."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pos = 0  # where the command being read starts in `buffer`

    def feed(self, chunk: bytes) -> int:
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos, done = 0, 0
        while True:
            end = self._command_end(self.pos)
            if end is None:
                return done
            self.pos, done = end, done + 1

    def _line(self, at: int) -> tuple[bytes, int] | None:
        nl = self.buffer.find(b"\r\n", at)
        return None if nl < 0 else (self.buffer[at:nl], nl + 2)

    def _command_end(self, at: int) -> int | None:
        header = self._line(at)
        if header is None:
            return None
        line, at = header
        if not line.startswith(b"*"):  # an inline command (redis-cli, telnet): one line
            return at
        for _ in range(int(line[1:])):
            size = self._line(at)
            if size is None:
                return None
            length, at = int(size[0][1:]), size[1]
            if len(self.buffer) < at + length + 2:
                return None
            at += length + 2
        return at


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    hold_next_reply: float = 0.0  # seconds to hold the next reply on this connection
    sent: Commands = field(default_factory=Commands)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()  # a reset, like a dropped network path, not a polite FIN


class Proxy:
    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.reply_delay = 0.0  # seconds each chunk from upstream is held before it is passed on
        self.cutting = False  # True: refuse service (new connections are closed at once)
        self.connections = 0  # client connections accepted so far
        self.commands = 0  # commands clients sent through it so far (top-level: not what runs inside functions)
        self.hold_marker: bytes | None = None  # one-shot: hold the reply to the next request holding these bytes
        self.hold_seconds = 0.0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Proxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.abort()
            tasks = [t for link in self._links for t in link.tasks]
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- modes -----------------------------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Pass traffic both ways at once (connections cut earlier stay cut; clients reconnect)."""
        self.reply_delay, self.cutting = 0.0, False

    def delay(self, seconds: float) -> None:
        """Hold every reply chunk from upstream `seconds` before passing it on (requests still go through)."""
        self.reply_delay = seconds

    def hold_reply_to(self, marker: bytes, seconds: float) -> None:
        """Once: hold the reply to the next request that contains `marker` (e.g. a function name) `seconds`."""
        self.hold_seconds, self.hold_marker = seconds, marker

    def cut(self) -> None:
        """Reset every open connection now and close each new one as soon as it is accepted."""
        self.cutting = True

        async def abort_all() -> None:
            for link in list(self._links):
                link.abort()

        self._call(abort_all())

    # -- plumbing --------------------------------------------------------------------------------------------

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.cutting:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link, delayed=False)),
            asyncio.create_task(self._pump(up_reader, writer, link, delayed=True)),
        ]
        await asyncio.wait(link.tasks)
        self._links.discard(link)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, delayed: bool
    ) -> None:
        """Copy one direction; replies are held `reply_delay` seconds each, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                due = asyncio.get_running_loop().time() + (self.reply_delay if delayed else 0.0)
                if not delayed:
                    self.commands += link.sent.feed(chunk)
                if not delayed and self.hold_marker is not None and self.hold_marker in chunk:
                    self.hold_marker, link.hold_next_reply = None, self.hold_seconds
                elif delayed and link.hold_next_reply:
                    due, link.hold_next_reply = due + link.hold_next_reply, 0.0
                queue.put_nowait((due, chunk))
                if not chunk or sender.done():
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            link.abort()
