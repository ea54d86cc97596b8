"""Pure logic of the consumer side: the entry codec, the key layout and pop argument checks."""

from __future__ import annotations

import msgpack
import pytest
from ridpool import functions
from ridpool.entry import ENTRY_VERSION, Entry, decode, encode
from ridpool.errors import CorruptEntry, InvalidArgument
from ridpool.keys import account_keys, pool_keys

ENTRY = Entry(
    "rid-" + "A" * 250, "0" * 32, "room-1", "4294967295", "rooms", 1_700_000_000_000, 1_700_000_270_000, "req-1"
)


def test_an_entry_survives_encode_and_decode() -> None:
    """encode/decode is lossless and deterministic (a retried add sends the same bytes)."""
    assert decode(encode(ENTRY)) == ENTRY
    assert encode(ENTRY) == encode(ENTRY)
    assert msgpack.unpackb(encode(ENTRY))[0] == ENTRY_VERSION


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xc1", "not a msgpack entry"),
        (msgpack.packb([2, "x"]), "unknown entry version 2"),
        (msgpack.packb({"v": 1}), "unknown entry version None"),
        (msgpack.packb([1, "rid"]), "has 9 fields, got 2"),
        (msgpack.packb([1, "r", "a", "c", 5, "p", 1, 2, "q"]), "wrong types"),
        (msgpack.packb([1, "r", "a", "c", "5", "p", True, 2, "q"]), "wrong types"),
    ],
)
def test_bytes_that_are_not_an_entry_are_refused(data: bytes, words: str) -> None:
    """Anything but a known version's exact layout raises CorruptEntry naming what is wrong."""
    with pytest.raises(CorruptEntry, match=words):
        decode(data)


def test_every_key_of_a_pool_shares_one_cluster_hash_tag() -> None:
    """All keys a pool function touches hash to one Cluster slot: the same {tag}."""
    keys = pool_keys("ridpool", "rooms")
    names = [
        keys.meta,
        keys.stats,
        keys.inflight,
        keys.uids,
        keys.ledger,
        keys.queue(None),
        keys.queue("r{x}"),
        keys.ready("room-1"),
    ]
    assert {n[n.index("{") : n.index("}") + 1] for n in names} == {"{rooms}"}
    acct = account_keys("ridpool", "default")
    assert {acct.rate[acct.rate.index("{") : acct.rate.index("}") + 1], acct.cooldown.split(":{")[1][:12]} == {
        "{acct:default}",
        "acct:default",
    }


@pytest.mark.parametrize("name", ["", "a{b}", "a:b", "x" * 65, "sp ace"])
def test_pool_names_that_would_break_the_hash_tag_are_refused(name: str) -> None:
    """Braces, colons and spaces in a pool name are refused before any key is built."""
    with pytest.raises(InvalidArgument, match="pool name"):
        pool_keys("ridpool", name)


@pytest.mark.parametrize("min_ttl", [-1, 300, float("nan"), float("inf"), "5"])
def test_an_invalid_min_ttl_is_refused(min_ttl: object) -> None:
    """min_ttl must be a number of seconds in [0, 300)."""
    with pytest.raises(InvalidArgument, match="min_ttl"):
        functions.pop_call(pool_keys("p", "web"), None, min_ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize(("min_ttl", "ms"), [(0, 0), (0.0001, 1), (10, 10_000), (2.5, 2500)])
def test_min_ttl_is_sent_in_whole_milliseconds_rounded_up(min_ttl: float, ms: int) -> None:
    """Rounding up never lets an entry with slightly less life than asked through."""
    assert functions.pop_call(pool_keys("p", "web"), None, min_ttl).args[1] == ms
