"""Temporal workflows. Deterministic and light: standard library, temporalio and the contracts only."""
