"""Benchmarks (``fedray bench ...``): measured in fresh subprocesses, written as CSV + PNG."""
