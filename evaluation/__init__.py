"""Accuracy evaluation: benchmark presets (``matchmill bench ...``), the benchmark history table and
``matchmill report``. The performance scripts are in the repository's ``benchmarks/`` folder (no package)."""
