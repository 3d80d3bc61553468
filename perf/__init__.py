"""Benchmarks and demos of tritonkron on real data (not part of the installed package)."""
