"""Run every benchmark against a redis-server and simulator of its own, then write the report.

    .venv/bin/python -m benchmarks.run           # full run (~3 minutes on 2 cores): docs/benchmarks.md + PNG
    .venv/bin/python -m benchmarks.run --quick   # smoke run with small sizes: benchmarks/out/ (numbers mean little)

The quick run writes elsewhere so that a smoke test never replaces the published figures with meaningless ones.
Benchmarks run one after another, never side by side: on a small machine they would measure each other.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import redis
from ridpool.daemon import log
from ridpool.daemon.localredis import LocalRedis

from benchmarks import announce, burst, cpu, first_pop, freshness, imports, memory, pop, refill, scale, starts, timeline
from benchmarks.common import FULL, QUICK, ROOT, load_average, machine
from benchmarks.report import Results, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run; writes to benchmarks/out/")
    parser.add_argument("--out", type=Path, default=None, help="directory for the .md and .png (default: docs/)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out: Path = args.out or (ROOT / "benchmarks" / "out" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    md = out / ("benchmarks-quick.md" if args.quick and args.out is None else "benchmarks.md")
    png = out / "benchmarks-run.png"
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])])

    # The in-process daemons log every stored ID at info; only trouble is worth seeing here.
    log.configure(level="warning", json=False)
    load = load_average()
    began = time.monotonic()
    server = LocalRedis().start()
    try:
        r = redis.Redis.from_url(server.url)
        print(f"redis-server on port {server.port}", flush=True)
        print("pop cost", flush=True)
        pops = pop.run(r, server.url, server.port, sizes)
        print("refill rate", flush=True)
        assert server.process is not None
        refills = refill.run(r, server.url, server.process.pid, sizes)
        print("memory", flush=True)
        memories = memory.run(r, sizes)
        print("time to first pop", flush=True)
        first = first_pop.run(r, server.url, sizes)
        print("daemon CPU", flush=True)
        cpus = cpu.run(r, server.url, sizes)
        print("timeline", flush=True)
        line = timeline.run(r, server.url, sizes, png)
        results = Results(
            command=command,
            quick=args.quick,
            machine=machine(r, load),
            pops=pops,
            refills=refills,
            refill_design=refill.sustained_design_rate(),
            memories=memories,
            first_pop=first,
            cpu=cpus,
            timeline=line,
            png=png.name,
            seconds=time.monotonic() - began,
        )
        r.close()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    # The sections other benchmarks write, each a run of its own, are kept as they were.
    old = md.read_text() if md.exists() else ""
    new = render(results)
    for section in (burst.SECTION, announce.SECTION, starts.SECTION, scale.SECTION, freshness.SECTION):
        new = section.carry(old, new)
    md.write_text(new)
    print("CLI imports", flush=True)
    imports.SECTION.write(imports.section(imports.run()), md)
    raw = ROOT / "benchmarks" / "out" / ("results-quick.json" if args.quick else "results.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(asdict(results), indent=1, default=str))
    print(f"wrote {md} and {png} in {results.seconds:.0f} s (raw numbers: {raw})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
