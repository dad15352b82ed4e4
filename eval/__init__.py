"""Judges and metrics that turn generation records into the paper's numbers (later stages)."""
