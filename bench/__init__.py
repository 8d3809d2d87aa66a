"""Benchmarks: `python -m bench.decode` (see bench/README.md)."""
