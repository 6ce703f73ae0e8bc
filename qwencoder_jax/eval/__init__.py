"""Evaluation: generation, sandboxed execution, benchmarks."""
