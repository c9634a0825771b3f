"""Benchmark scripts (figures and commands in docs/benchmarks.md); not tests: nothing here asserts a time."""
