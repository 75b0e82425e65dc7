"""Benchmarks that print ratio tables against in-process baselines (not part of the tests).

Run ``python -m bench`` from the repository root; ``--quick`` finishes in under 2 minutes.
"""
