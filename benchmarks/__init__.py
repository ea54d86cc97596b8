"""ridpool's benchmarks: `python -m benchmarks.run [--quick]` measures and writes docs/benchmarks.md."""
