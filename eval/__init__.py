"""Accuracy harness: synthetic long-context tasks, LongBench v2, and the small long-context model we ship."""

from pathlib import Path

SHIPPED_MODEL = Path(__file__).with_name("model")
