"""Console entry point ``matchmill`` (implementation in :mod:`matchmill.pipeline.cli`)."""

from matchmill.pipeline.cli import main

__all__ = ["main"]
