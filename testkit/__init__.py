"""Helpers the tests and the benchmarks share (not shipped: they run from the repository root)."""
