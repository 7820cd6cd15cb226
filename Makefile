# Every target creates the virtual environment it needs on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-routing bench-history clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the router in front of 4 simulated workers, with a short chat load
	$(PY) -m router demo --load

test: $(STAMP)  ## the whole test suite
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)  ## proxy overhead, throughput, streaming and memory: prints a table
	$(PY) -m router bench

bench-history: $(STAMP)  ## history read + prompt rebuild latency and client egress (needs Redis on :6379)
	$(PY) -m bench.history_bench

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
