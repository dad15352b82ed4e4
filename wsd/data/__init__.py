"""Prompt sets (benchmarks) and the files shipped with the package."""
