"""The entry: one pooled resourceId with everything a starter needs to call `start`, and its msgpack codec.

Stored form: a msgpack array `[version, resourceId, appid, cname, uid, pool, sentAt_ms, expiresAt_ms,
requestId]`. An array, not a map, because it is what Redis keeps once per pooled ID (memory) and what the pop
function reads by position. Times are Redis server time in milliseconds: the clock all replicas share.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from ridpool.errors import CorruptEntry

ENTRY_VERSION = 1
_FIELDS = 9


@dataclass(frozen=True, slots=True)
class Entry:
    """A pooled ID. `expires_in` (seconds) is set on a popped entry: its remaining life at pop time."""

    resource_id: str
    appid: str
    cname: str
    uid: str
    pool: str
    sent_at_ms: int  # server time the acquire request was sent: Agora's five minutes start no later
    expires_at_ms: int  # server time it stops being offered (sent_at + the pool's max_age)
    request_id: str  # Agora's X-Request-Id of the acquire, for support tickets
    expires_in: float | None = None
    # Where a starter got it: "pool" (popped), or "acquired" on the spot by pop_or_acquire. Not stored.
    source: str = "pool"

    def __repr__(self) -> str:
        # IDs are long; a short repr keeps logs readable.
        rid = self.resource_id if len(self.resource_id) <= 16 else self.resource_id[:12] + "..."
        return (
            f"Entry(pool={self.pool!r}, cname={self.cname!r}, uid={self.uid!r}, resource_id={rid!r}, "
            f"expires_in={self.expires_in!r}, source={self.source!r})"
        )


def encode(entry: Entry) -> bytes:
    """Pack an entry into its stored form (deterministic: a retried add sends the same bytes)."""
    packed: bytes = msgpack.packb(
        [
            ENTRY_VERSION,
            entry.resource_id,
            entry.appid,
            entry.cname,
            entry.uid,
            entry.pool,
            entry.sent_at_ms,
            entry.expires_at_ms,
            entry.request_id,
        ],
        use_bin_type=True,
    )
    return packed


_TYPES = (int, str, str, str, str, str, int, int, str)


def decode(data: bytes, expires_in: float | None = None) -> Entry:
    """Unpack a stored entry; raise CorruptEntry for anything that is not a known version's layout.

    On every pop's path, so it checks types with one pass and builds the Entry once.
    """
    try:
        fields = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptEntry(f"not a msgpack entry: {exc}") from None
    if type(fields) is not list or not fields or fields[0] != ENTRY_VERSION:
        version = fields[0] if isinstance(fields, list) and fields else None
        raise CorruptEntry(f"unknown entry version {version!r} (this client reads {ENTRY_VERSION})")
    if len(fields) != _FIELDS:
        raise CorruptEntry(f"entry version {ENTRY_VERSION} has {_FIELDS} fields, got {len(fields)}")
    for value, kind in zip(fields, _TYPES, strict=True):
        if type(value) is not kind:  # exact: a bool is not an int here
            raise CorruptEntry("entry fields have the wrong types")
    _, rid, appid, cname, uid, pool, sent, expires, request_id = fields
    return Entry(rid, appid, cname, uid, pool, sent, expires, request_id, expires_in)
