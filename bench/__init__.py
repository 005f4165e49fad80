"""Benchmark presets (``matchmill bench ...``), the benchmark history table and ``matchmill report``."""
