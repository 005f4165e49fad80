"""Helpers shared by test modules in several folders (import them as ``tests.helpers.<module>``);
fixtures live in ``tests/conftest.py``."""
