"""Benchmark metrics for the fine-tuning tasks."""
