# One entry point for setup, demo, tests, lint and benchmarks. Every target sets itself up first,
# so `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench-scoring bench-throughput ped2 clean

$(STAMP): pyproject.toml tools/setup.sh
	bash tools/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamvad demo --out demo-out

test: $(STAMP)
	bash tools/setup.sh --system
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check streamvad tests tools

bench-scoring: $(STAMP)
	$(VENV)/bin/streamvad bench scoring --json bench-out/scoring.json

bench-throughput: $(STAMP)
	$(VENV)/bin/streamvad bench throughput --json bench-out/throughput.json

ped2: $(STAMP)
	bash tools/ped2_benchmark.sh

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .ruff_cache
