"""Benchmarks: each prints side-by-side ratios measured in one run (results as data under
bench/results/)."""
