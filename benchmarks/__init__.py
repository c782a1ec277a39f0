"""Benchmark scripts: each prints a Markdown table of speed/accuracy against a baseline."""
