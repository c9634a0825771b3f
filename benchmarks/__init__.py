"""Benchmark scripts (see benchmarks/README.md); not tests: nothing here asserts a time."""
