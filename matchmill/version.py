"""The package version (one definition; pyproject.toml carries the same number for the installer)."""

__version__ = "0.1.0"
