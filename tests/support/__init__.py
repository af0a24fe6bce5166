"""Helpers the tests and the benchmarks share: the tutorial's reference loop, throwaway PostgreSQL
databases, free ports."""
