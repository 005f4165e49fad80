"""Paths every test shares. The repository root is found by walking up to ``pyproject.toml``, so a
test module's depth under ``tests/`` never matters (never ``Path(__file__).parents[N]``)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The repository root (the folder holding pyproject.toml).
REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
#: Reference data beside the repository, not in it (only in the dev workspace).
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
BENCHMARKS = REPO / "benchmarks"

#: Marks a test that reads ../shared/data: skipped with this reason where it is absent (a user's checkout).
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"reference data {SHARED_DATA} absent (only in the dev workspace)"
)


def shared_data(sub: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"{path} is absent (reference data lives beside the repository, not in it)")
    return path
