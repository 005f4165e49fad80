"""Running the accuracy benchmarks (``matchmill bench hpatches|pose|megadepth1500``): pair listings,
method configs, the pipeline runs, per-method results, threshold tuning, mining scores and the
benchmark history table (:mod:`.history`)."""
