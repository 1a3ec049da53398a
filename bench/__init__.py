"""Benchmarks and the scripts that reproduce the embedded model's weights."""
