"""Benchmark suite of the hot paths (`python -m bismap.bench all`); see bismap/bench/__main__.py."""
