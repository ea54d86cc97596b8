"""What `ridpool pop` pays in imports before it sends its one FCALL, measured with `python -X importtime`.

    .venv/bin/python -m benchmarks.imports     # rewrites its section of docs/benchmarks.md (a full run does too)

Anchors, in the same run: the interpreter's own start-up imports (`python -c pass`), and redis-py alone
(`import redis`), the floor of any Python pop: redis-py 8 imports its asyncio half and its telemetry whatever
one uses. Each figure is the median
of several fresh processes; the total is the sum of every module's own import time as importtime reports it.
`ridpool pop` runs for real against a port where nothing listens, so it imports exactly what a pop imports.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from dataclasses import dataclass

from ridpool.daemon.localredis import free_port

from benchmarks import page
from benchmarks.common import ROOT

ROUNDS = 7
TARGET_MS = 100.0
BEGIN, END = "<!-- imports:begin -->", "<!-- imports:end -->"
SECTION = page.Section(BEGIN, END)
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True, slots=True)
class Imports:
    what: str
    ms: float  # median over the rounds of the summed own import times
    modules: int
    spread: tuple[float, float]  # fastest, slowest round


def measure(what: str, args: list[str], rounds: int = ROUNDS) -> Imports:
    totals, modules = [], 0
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=ROOT, check=False
        )
        own = [int(m[1]) for line in done.stderr.splitlines() if (m := _LINE.match(line))]
        totals.append(sum(own) / 1000)
        modules = len(own)
    return Imports(what, statistics.median(totals), modules, (min(totals), max(totals)))


def run() -> list[Imports]:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    return [
        measure("`python -c pass` (anchor: the interpreter's start-up)", ["-c", "pass"]),
        measure("`import redis` (anchor: redis-py, the floor of a pop)", ["-c", "import redis"]),
        measure("`ridpool pop` (base install's path)", ["-m", "ridpool.cli", "pop", "web", "--redis-url", closed]),
        measure("`ridpool status`", ["-m", "ridpool.cli", "status", "--redis-url", closed]),
        measure("the daemon (`import ridpool.daemon.service`)", ["-c", "import ridpool.daemon.service"]),
    ]


def section(results: list[Imports]) -> str:
    anchor, redis_py, pop = results[0], results[1], results[2]
    verdict = "met" if pop.ms < TARGET_MS else "**missed**"
    rows = "\n".join(
        f"| {r.what} | {r.ms:.1f} ms | {r.spread[0]:.1f} to {r.spread[1]:.1f} ms | {r.modules} | "
        f"{r.ms / anchor.ms:.1f}x |"
        for r in results
    )
    return f"""{BEGIN}
## CLI start-up: imports

Reproduce: `.venv/bin/python -m benchmarks.imports` (also part of a full run). `python -X importtime`, the
sum of every module's own import time, median of {ROUNDS} fresh processes.

| command | imports (median) | rounds | modules | vs anchor |
|---|---|---|---|---|
{rows}

`ridpool pop` imports in {pop.ms:.0f} ms (target < {TARGET_MS:.0f} ms: {verdict}), of which the interpreter's
start-up is {anchor.ms:.0f} ms and redis-py {redis_py.ms - anchor.ms:.0f} ms more: ridpool itself (the CLI,
msgpack, the function library, argparse, json) adds {pop.ms - redis_py.ms:.0f} ms and
{pop.modules - redis_py.modules} modules to `import redis`. The CLI imports the daemon, the simulator and the
demo only inside the commands that need them (the daemon's imports are the last row). Measured from the
development install (`pip install -e`), whose import hook adds a few ms that a wheel install does not have.
{END}
"""


def main() -> int:
    results = run()
    text = section(results)
    print(text)
    SECTION.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
