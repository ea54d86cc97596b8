"""The CPU anchor: a bare asyncio httpx client POSTing `acquire` at a fixed pace, and nothing else.

Run as its own process (`python -m benchmarks.acquire_loop URL RATE CONCURRENCY SECONDS`, credentials from
AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET) so that its CPU time is measured exactly like the daemon's: from
/proc, by the parent. It does the least any acquirer must do: build the body, send it with Basic auth on a
keep-alive connection, read the JSON answer and check that it carries a resourceId.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import httpx

APPID = "0123456789abcdef0123456789abcdef"


async def main(base_url: str, rate: float, concurrency: int, seconds: float) -> int:
    url = f"{base_url}/v1/apps/{APPID}/cloud_recording/acquire"
    auth = httpx.BasicAuth(os.environ["AGORA_CUSTOMER_ID"], os.environ["AGORA_CUSTOMER_SECRET"])
    interval = 1 / rate
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    failures = 0
    # The same client settings as the daemon's (daemon/service.py), so only the work around the request differs.
    limits = httpx.Limits(max_connections=concurrency * 2, keepalive_expiry=30)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), limits=limits) as http:

        async def worker() -> None:
            nonlocal next_at, failures
            while True:
                now = time.monotonic()
                at = max(next_at, now)
                next_at = at + interval
                if at > deadline:
                    return
                await asyncio.sleep(at - now)
                body = {"cname": f"web-{uuid.uuid4().hex}", "uid": "527841", "clientRequest": {"scene": 1}}
                response = await http.post(
                    url, json=body, auth=auth, headers={"Content-Type": "application/json;charset=utf-8"}
                )
                answer = response.json() if response.status_code == 200 else None
                if not (isinstance(answer, dict) and isinstance(answer.get("resourceId"), str)):
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return 1 if failures else 0


if __name__ == "__main__":
    url, rate, concurrency, seconds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sys.exit(asyncio.run(main(url, rate, concurrency, seconds)))
