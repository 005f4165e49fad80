# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: install demo test bench perf

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

demo: install
	$(PYTHON) -m matchmill run configs/demo.yaml
	$(PYTHON) -m matchmill run configs/demo-learned.yaml
	$(PYTHON) -m matchmill compare demo demo-learned

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

# Performance scripts (docs/benchmarks.md): pipeline overhead; the full suite (PERF_FLAGS=--quick: smaller).
bench: install
	$(PYTHON) benchmarks/pipeline_overhead.py

perf: install
	$(PYTHON) benchmarks/perf_suite.py $(PERF_FLAGS)
