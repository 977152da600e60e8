"""Operator tools that run outside the workers (never shipped in a worker image)."""
