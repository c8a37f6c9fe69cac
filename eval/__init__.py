"""Accuracy harness: synthetic long-context tasks, LongBench v2, the lm-eval adapter, the shipped model."""
