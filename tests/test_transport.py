"""The daemon's HTTP transport (daemon/transport.py): requests spread over small connection pools, against the
simulator over real HTTP."""

from __future__ import annotations

import asyncio

import httpx
from ridpool.daemon.transport import Shards
from ridpool.testing import Faults, Simulator


async def test_requests_in_flight_spread_over_the_pools_and_give_their_slot_back() -> None:
    """64 requests at once over pools of 8: every pool carries 8 (none more than its connections), all answered,
    and once the responses are closed no pool counts a request in flight."""
    with Simulator(customer_id="c", customer_secret="s", faults=Faults(latency=0.2)) as sim:
        shards = Shards(64, per_shard=8)
        seen: list[list[int]] = []

        async def one(client: httpx.AsyncClient) -> int:
            response = await client.get(f"{sim.url}/_sim/stats")
            seen.append(list(shards.busy))
            return response.status_code

        async with httpx.AsyncClient(transport=shards, timeout=10) as client:
            codes = await asyncio.gather(*(one(client) for _ in range(64)))
            assert codes == [200] * 64
            assert len(shards.pools) == 8 and max(max(b) for b in seen) <= 8
            assert max(sum(b) for b in seen) > 8  # in flight together, over several pools
            assert shards.busy == [0] * 8
