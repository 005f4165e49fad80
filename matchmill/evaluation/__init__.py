"""Accuracy evaluation, split by job: :mod:`.benchmarks` runs the benchmark presets
(``matchmill bench ...``) and keeps the history table, :mod:`.report` renders ``matchmill report``,
:mod:`.release` makes the model card and packs the shipped weights. The performance scripts are in
the repository's ``benchmarks/`` folder (no package)."""
