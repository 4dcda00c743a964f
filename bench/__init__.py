"""Benchmarks: figures measured against a baseline in the same run (see STYLE.md)."""
