"""What a replica knows of its pools' channels between rounds (daemon/model.py): pure, table-tested."""

from __future__ import annotations

import time

import pytest
from ridpool.daemon.model import Model, Want
from ridpool.daemon.planner import Target


def model(**pools: tuple[str | None, ...]) -> Model:
    return Model(dict(pools))


def wants(m: Model, free: int, now_ms: int = 0) -> list[Want]:
    """The leases the model would ask for now, per channel."""
    return m.wants(free, now_ms)[0]


def filled(m: Model, pool: str, slot: str | None, live: int, target: int) -> None:
    m.set_targets(pool, Target(target, f"size {target}"), {})
    m.swept(pool, slot, live, None)


@pytest.mark.parametrize(
    ("channels", "first"),
    [
        ({"a": (10, 9), "b": (10, 2)}, "b"),  # the emptiest relative to its size first
        ({"a": (100, 50), "b": (4, 1)}, "b"),  # 25% beats 50% although its deficit is smaller
        ({"a": (10, 10), "b": (5, 5)}, None),  # all full
        ({"a": (4, 2), "b": (4, 3)}, "a"),
    ],
)
def test_the_emptiest_channel_is_leased_for_first(channels: dict[str, tuple[int, int]], first: str | None) -> None:
    """When the budget is short the pool's emptiest channels (relative to their target) go first."""
    m = model(classes=())
    m.set_targets(
        "classes", Target(0, ""), {name: Target(target, "announced") for name, (target, _) in channels.items()}
    )
    for name, (_, live) in channels.items():
        m.swept("classes", name, live, None)
    found = wants(m, 1)
    assert (found[0].slot if found else None) == first


def test_pools_take_turns_so_a_small_pool_never_waits_for_a_large_one_to_fill() -> None:
    """A template pool short by 2 and a pool of 9,000 empty channels, one lease free at a time: the small one's
    comes second, not after the 9,000 (one pool's bulk refill must not starve a pool that starters pop from)."""
    m = model(web=(None,), classes=())
    filled(m, "web", None, 1, 3)
    rooms = {f"room-{i}": Target(1, "announced") for i in range(9000)}
    m.set_targets("classes", Target(0, ""), rooms)
    for room in rooms:
        m.swept("classes", room, 0, None)
    _, order = m.wants(1, now_ms=0)
    _, more = m.wants(1, now_ms=0)  # the next call takes up after the last pool served
    assert [pool for pool, _ in order + more] == ["classes", "web"]


def test_a_lease_costs_one_heap_step_and_asks_at_most_what_is_free() -> None:
    """Ten channels short by 3 each and 7 free slots: 7 leases asked, split by emptiness, nothing twice."""
    m = model(rooms=tuple(f"r{i}" for i in range(10)))
    m.set_targets("rooms", Target(3, "size 3"), {})
    for i in range(10):
        m.swept("rooms", f"r{i}", i % 2, None)
    found = wants(m, 7)
    assert sum(w.want for w in found) == 7 and len({w.slot for w in found}) == len(found)
    assert all(w.slot in {f"r{i}" for i in range(0, 10, 2)} for w in found[:2])  # the empty ones first


def test_choosing_leases_costs_the_same_in_a_pool_of_500_or_50000_configured_channels() -> None:
    """2,000 leases chosen from a named pool of 500 configured channels and from one of 50,000 (each channel empty,
    target 4): the larger costs at most 3x the CPU of the smaller (a lookup per lease that scanned the channel list
    made it ~100x and took 46% of the daemon's CPU in a 5,000-channel fill)."""

    def cost(n: int) -> float:
        names = tuple(f"room-{i}" for i in range(n))
        m = model(rooms=names)
        m.set_targets("rooms", Target(4, "size 4"), {})
        for name in names:
            m.swept("rooms", name, 0, None)
        began = time.process_time()
        for _ in range(20):
            m.wants(100, 0)
        return time.process_time() - began

    cost(500)  # warm
    small, large = min(cost(500) for _ in range(3)), min(cost(50_000) for _ in range(3))
    assert large <= 3 * small + 0.01, (small, large)


def test_leases_go_one_at_a_time_to_the_emptiest_so_channels_fill_side_by_side() -> None:
    """A pool short by 3 and three channels short by 1, all empty: the order of leases interleaves them."""
    m = model(web=(None,), rooms=("r1", "r2", "r3"))
    filled(m, "web", None, 0, 3)
    m.set_targets("rooms", Target(1, "size 1"), {})
    for r in ("r1", "r2", "r3"):
        m.swept("rooms", r, 0, None)
    _, order = m.wants(6, now_ms=0)
    assert order == [("rooms", "r1"), ("web", None), ("rooms", "r2"), ("web", None), ("rooms", "r3"), ("web", None)]


def test_a_channel_never_swept_is_not_leased_for_but_listed_to_sweep() -> None:
    """Until a sweep says what it holds, a channel is one to look at, not one to lease for."""
    m = model(rooms=("r1", "r2"))
    m.set_targets("rooms", Target(2, "size 2"), {})
    assert m.unknown("rooms") == ["r1", "r2"] and wants(m, 10, 0) == []
    m.swept("rooms", "r1", 0, None)
    assert m.unknown("rooms") == ["r2"] and [w.slot for w in wants(m, 10, 0)] == ["r1"]


def test_an_expiry_makes_the_channel_due_and_an_announced_one_due_ahead() -> None:
    """A channel is due when its oldest entry expires (ahead of it where entries are retired before)."""
    m = model(web=(None,), classes=())
    m.swept("web", None, 3, 50_000)
    m.swept("classes", "c1", 1, 50_000, due_ahead_ms=10_000)
    assert m.due_slots(39_999) == {}
    assert m.due_slots(40_000) == {"classes": ["c1"]}
    assert m.due_slots(50_000) == {"web": [None]} and m.next_due_ms() is None


def test_a_blocked_pool_keeps_its_channels_for_later_and_others_go_first() -> None:
    """A pool at its cap (or held) is passed over without losing its short channels."""
    m = model(a=(None,), b=(None,))
    filled(m, "a", None, 0, 5)
    filled(m, "b", None, 4, 5)
    m.pools["a"].blocked_until = 1_000
    assert [w.pool for w in wants(m, 10, 0)] == ["b"]
    m.evaluate("b", None)  # b's reply came back
    assert [w.pool for w in wants(m, 10, 1_000)] == ["a", "b"]


def test_a_channel_leased_elsewhere_is_asked_about_again_later_not_at_once() -> None:
    """Refused (another replica's lease): out of the way until its time, then weighed again."""
    m = model(a=(None,))
    filled(m, "a", None, 0, 2)
    [want] = wants(m, 5)
    m.later_at("a", None, 1_000)
    m.wake(999)
    assert wants(m, 5, 999) == []
    m.wake(1_000)
    assert [w.want for w in wants(m, 5, 1_000)] == [want.want]


def test_an_announced_channels_own_target_is_on_top_of_what_it_holds() -> None:
    """beyond_live: 'one more to acquire' stays one more as entries come and go, until the source says less."""
    m = model(classes=())
    m.set_targets("classes", Target(0, ""), {"c1": Target(1, "announced c1", beyond_live=True)})
    m.swept("classes", "c1", 2, None)
    assert m.target("classes", "c1").count == 3 and m.needs("classes", "c1") == 1
    m.set_targets("classes", Target(0, ""), {"c1": Target(0, "announced c1", beyond_live=True)})
    assert m.needs("classes", "c1") == 0


def test_a_resync_forgets_the_channels_so_each_is_swept_again() -> None:
    """After Redis lost or replaced the data, nothing known is trusted: every channel is looked at again."""
    m = model(rooms=("r1", "r2"))
    m.set_targets("rooms", Target(1, "size 1"), {})
    m.swept("rooms", "r1", 1, None)
    m.swept("rooms", "r2", 1, None)
    m.resync("rooms")
    assert m.unknown("rooms") == ["r1", "r2"] and m.pools["rooms"].since_ms == -1
