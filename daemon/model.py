"""What one replica knows of every pool's channels between rounds, so that a round costs what changed, not what
is stored. Pure: no I/O; the refill feeds it what Redis says (sweeps, reserves, adds, the change feed) and asks
it which channels to look at and which to lease for.

Per channel: its live entries and the expiry of its oldest (as last swept), the acquires this replica has in
flight for it, and when to look at it again. Heaps carry the work between rounds:

- `due`: when a channel's oldest entry expires (it must be swept then: it lost an entry by itself);
- `short`, one per pool: its channels that lack entries, emptiest first relative to their target (the pools that
  lack take turns, and a pool's next lease goes to the top of its heap: O(log n) per lease, whatever the number
  of channels);
- `later`: channels that lacked entries but were leased by another replica (or refused): asked again then.

Entries in a heap are never updated in place: each carries the channel's version, and a stale one is skipped when
it comes up, so a change costs one push.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from ridpool.daemon.planner import Target

Slot = str | None  # a channel's queue: None for a template pool's one queue


@dataclass(slots=True)
class Channel:
    live: int = 0  # entries stored and alive when last looked at (plus this replica's adds since)
    oldest_ms: int | None = None  # expiresAt of the oldest of them (None: empty)
    pending: int = 0  # this replica's acquires in flight for it
    known: bool = False  # swept since this replica started (or since its pool was resynced)
    version: int = 0  # bumped on every change: heap entries of an older version are stale


@dataclass(frozen=True, slots=True)
class Want:
    pool: str
    slot: Slot
    target: int
    consumable: int
    want: int  # leases asked for now


@dataclass
class PoolModel:
    name: str
    config_slots: tuple[Slot, ...]  # the channels every pool-wide demand is for (the template pool's queue)
    channels: dict[Slot, Channel] = field(default_factory=dict)
    every: Target = field(default_factory=lambda: Target(0, ""))  # what each configured channel wants
    own: dict[Slot, Target] = field(default_factory=dict)  # what named channels want on top (announced ones)
    since_ms: int = -1  # the change feed read up to here (-1: not yet: look at every channel)
    seen_at_since: set[str] = field(default_factory=set)  # feed entries scored since_ms already read (it is read
    # from since_ms on, inclusive: a change in the same millisecond after the read is not missed)
    blocked_until: int = 0  # the pool's cap was reached, or it is held: no lease asked before then
    data_set: str = ""  # the Redis process its queues were last seen in (another: a restore, a failover)
    looked_ms: int = 0  # when every channel was last looked at (resync)
    unseen: set[Slot] = field(default_factory=set)  # channels with a target not looked at since the last resync
    short: list[tuple[float, int, str, int]] = field(default_factory=list)  # (fill, -needs, slot key, version)
    configured: frozenset[Slot] = frozenset()  # config_slots as a set: `target` asks it for every lease

    def __post_init__(self) -> None:
        self.configured = frozenset(self.config_slots)


class Model:
    """Every pool's channels, targets and the three heaps (see the module docstring)."""

    def __init__(self, pools: dict[str, tuple[Slot, ...]]) -> None:
        self.pools = {name: PoolModel(name, slots) for name, slots in pools.items()}
        self.due: list[tuple[int, str, str]] = []  # (ms, pool, slot key), slot key '' for None
        self.turn = ""  # the pool the last lease went to: the next call takes up after it
        self.later: list[tuple[int, str, str]] = []  # (ms, pool, slot key)

    # -- channels ------------------------------------------------------------------------------------------

    def channel(self, pool: str, slot: Slot) -> Channel:
        model = self.pools[pool]
        found = model.channels.get(slot)
        if found is None:
            found = model.channels[slot] = Channel()
        return found

    def unknown(self, pool: str) -> list[Slot]:
        """Channels of the pool with a target that were never swept (at start, after a resync, new ones)."""
        return sorted(self.pools[pool].unseen, key=lambda s: (s is not None, s or ""))

    def refit(self, pool: str, slots: tuple[Slot, ...]) -> None:
        """A reload: a new pool gets a model; a pool whose configured channels changed is looked at again."""
        model = self.pools.get(pool)
        if model is None:
            self.pools[pool] = PoolModel(pool, slots)
        elif model.config_slots != slots:
            model.config_slots, model.configured = slots, frozenset(slots)
            self.resync(pool)

    def retire(self, pool: str) -> None:
        """A reload dropped the pool: nothing more is leased for it. Its model stays while the acquires in flight
        for it finish (and for a reload that brings it back)."""
        if pool in self.pools:
            self.set_targets(pool, Target(0, "removed"), {})

    def resync(self, pool: str) -> None:
        """Forget what is known of the pool's channels (Redis lost or replaced them): each is swept again."""
        model = self.pools[pool]
        for channel in model.channels.values():
            channel.known = False
            channel.version += 1
        model.since_ms, model.blocked_until = -1, 0
        model.unseen = set(model.own) | (set(model.config_slots) if model.every.count > 0 else set())

    def swept(
        self, pool: str, slot: Slot, live: int, oldest_ms: int | None, *, due_ahead_ms: int = 0, was_due: bool = False
    ) -> None:
        """What a sweep found in a channel's queue. Its next due time is pushed when its oldest entry is another
        one than before, or when it was swept because due (its oldest still there: looked at a little early)."""
        channel = self.channel(pool, slot)
        moved = oldest_ms != channel.oldest_ms or not channel.known or was_due
        channel.live, channel.oldest_ms, channel.known = live, oldest_ms, True
        self.pools[pool].unseen.discard(slot)
        if oldest_ms is not None and moved:
            heapq.heappush(self.due, (oldest_ms - due_ahead_ms, pool, _key(slot)))
        self.evaluate(pool, slot)

    def due_slots(self, now_ms: int) -> dict[str, list[Slot]]:
        """Channels whose oldest entry expired (or is to be retired) by `now_ms`, per pool."""
        out: dict[str, list[Slot]] = {}
        while self.due and self.due[0][0] <= now_ms:
            _, pool, key = heapq.heappop(self.due)
            model = self.pools.get(pool)
            if model is not None:
                out.setdefault(pool, []).append(_slot(key))
        return {pool: list(dict.fromkeys(slots)) for pool, slots in out.items()}

    def stored(self, pool: str, slot: Slot, expires_at_ms: int, *, due_ahead_ms: int = 0) -> None:
        """This replica added an entry to the channel."""
        channel = self.channel(pool, slot)
        channel.live += 1
        if channel.oldest_ms is None or expires_at_ms < channel.oldest_ms:
            channel.oldest_ms = expires_at_ms
            heapq.heappush(self.due, (expires_at_ms - due_ahead_ms, pool, _key(slot)))

    # -- targets -------------------------------------------------------------------------------------------

    def set_targets(self, pool: str, every: Target, own: dict[Slot, Target]) -> None:
        """The pool's targets this round; the channels whose target changed are weighed again."""
        model = self.pools[pool]
        changed: list[Slot] = []
        if every != model.every:
            if every.count > 0 and model.every.count <= 0:
                model.unseen.update(s for s in model.config_slots if not self.channel(pool, s).known)
            model.every = every
            changed += model.config_slots
        for slot in set(model.own) | set(own):
            if model.own.get(slot) != own.get(slot):
                changed.append(slot)
                if slot in own and not self.channel(pool, slot).known:
                    model.unseen.add(slot)
        model.own = own
        for slot in dict.fromkeys(changed):
            self.evaluate(pool, slot)

    def target(self, pool: str, slot: Slot) -> Target:
        """What a channel should hold now: the pool-wide target for a configured channel, plus its own (an
        announced channel's own target is on top of its live entries: what is still to acquire)."""
        model = self.pools[pool]
        count, consumable, reason = 0, 0, model.every.reason
        if slot in model.configured:
            count, consumable = model.every.count, model.every.consumable
        own = model.own.get(slot)
        if own is not None:
            extra = own.count + (self.channel(pool, slot).live if own.beyond_live else 0)
            count, consumable = count + extra, consumable + own.consumable
            reason = own.reason if own.count >= model.every.count else reason
        return Target(count, reason, consumable)

    # -- leasing -------------------------------------------------------------------------------------------

    def needs(self, pool: str, slot: Slot) -> int:
        channel = self.channel(pool, slot)
        return self.target(pool, slot).count - channel.live - channel.pending

    def evaluate(self, pool: str, slot: Slot) -> None:
        """A channel changed (its entries, its leases or its target): queue it for a lease if it lacks entries."""
        channel = self.channel(pool, slot)
        channel.version += 1
        target = self.target(pool, slot).count
        needs = target - channel.live - channel.pending
        if needs > 0 and channel.known:
            fill = (channel.live + channel.pending) / target
            heapq.heappush(self.pools[pool].short, (fill, -needs, _key(slot), channel.version))

    def later_at(self, pool: str, slot: Slot, at_ms: int) -> None:
        """Leased by another replica (or refused): weigh it again at `at_ms`."""
        self.channel(pool, slot).version += 1
        heapq.heappush(self.later, (at_ms, pool, _key(slot)))

    def wake(self, now_ms: int) -> None:
        """Channels put off until now are weighed again; so are those of pools no longer blocked."""
        while self.later and self.later[0][0] <= now_ms:
            _, pool, key = heapq.heappop(self.later)
            if pool in self.pools:
                self.evaluate(pool, _slot(key))

    def wants(self, free: int, now_ms: int) -> tuple[list[Want], list[tuple[str, Slot]]]:
        """Up to `free` leases to ask for, one at a time: the pools that lack entries take turns, and within a
        pool the lease goes to its emptiest channel relative to its target (so that channels fill side by side,
        not one after the other, and a pool of thousands of empty channels does not make a small pool wait for
        all of them). The wants per channel, and the order of the leases (acquires should start in it); a pool
        blocked (capped, held) is passed over and its channels kept."""
        asked: dict[tuple[str, Slot], int] = {}
        order: list[tuple[str, Slot]] = []
        names = sorted(n for n, m in self.pools.items() if m.short and m.blocked_until <= now_ms)
        if names:
            first = next((i for i, n in enumerate(names) if n > self.turn), 0)  # take up after the last served
            names = names[first:] + names[:first]
        turns = deque(names)
        while turns and free > 0:
            pool = turns.popleft()
            leased = self._lease_one(self.pools[pool], asked)
            if leased is not None:
                order.append(leased)
                self.turn = pool
                free -= 1
            if self.pools[pool].short:
                turns.append(pool)
        out = []
        for (pool, slot), n in asked.items():
            aim = self.target(pool, slot)
            out.append(Want(pool, slot, aim.count, aim.consumable, n))
            self.channel(pool, slot).version += 1  # taken off the heap: the reply weighs it again
        return out, order

    def _lease_one(self, model: PoolModel, asked: dict[tuple[str, Slot], int]) -> tuple[str, Slot] | None:
        """One lease to the pool's emptiest channel that still lacks one (stale heap entries are dropped): (pool,
        that channel), or None."""
        while model.short:
            _, _, key, version = heapq.heappop(model.short)
            slot = _slot(key)
            channel = model.channels.get(slot)
            if channel is None or channel.version != version:
                continue  # stale: the channel changed since this was pushed
            n = asked.get((model.name, slot), 0)
            target = self.target(model.name, slot).count
            needs = target - channel.live - channel.pending - n
            if needs <= 0:
                continue
            asked[(model.name, slot)] = n + 1
            if needs > 1:
                fill = (channel.live + channel.pending + n + 1) / target
                heapq.heappush(model.short, (fill, -(needs - 1), key, version))
            return (model.name, slot)
        return None

    def next_due_ms(self) -> int | None:
        """When the next channel expires by itself or is put off until (the refill loop may sleep till then)."""
        times = [h[0][0] for h in (self.due, self.later) if h]
        return min(times) if times else None


def _key(slot: Slot) -> str:
    return "" if slot is None else slot


def _slot(key: str) -> Slot:
    return None if key == "" else key
