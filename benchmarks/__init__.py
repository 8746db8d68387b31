"""Benchmarks (run as scripts: `python benchmarks/throughput.py`)."""
