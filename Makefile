# Every target creates the virtual environment it needs on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-routing bench-failover bench-decision bench-history bench-processes bench-recall bench-limits engine test-engine bench-engine clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the router in front of 4 simulated workers, with a short chat load
	$(PY) -m router demo --load

test: $(STAMP)  ## the whole test suite: ruff, the tests, then the router on real llama.cpp servers (test-engine)
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-engine

engine: $(STAMP)  ## llama-server built once into ~/.cache/kvrouter (10-20 min on 2 cores; then cached) and the tiny model
	@command -v cmake >/dev/null && command -v ninja >/dev/null || $(PY) -m pip install --quiet cmake ninja
	$(PY) -m router.tooling.engine.build
	$(PY) -m router.tooling.engine.model

test-engine: engine  ## the router on real llama.cpp servers: affinity, SIGKILL mid-load, streams, orchestrator, load monitor (< 3 min once built)
	$(PY) -m pytest -q -p no:randomly tests/engine

bench-engine: engine  ## consistent_hash, the default and round_robin on real llama.cpp servers: TTFT, cached tokens, 3 runs, a plot (< 15 min)
	$(PY) -m loadtests.engine_bench $(if $(QUICK),--quick)

bench: $(STAMP)  ## proxy overhead, throughput, streaming and memory: prints a table
	$(PY) -m router bench

bench-history: $(STAMP)  ## history read + prompt rebuild latency and client egress (needs Redis on :6379)
	$(PY) -m router.tooling.bench.history_bench

bench-recall: $(STAMP)  ## semantic recall: the right turn back, its latency with 4 MB of vectors, prefix-cache cost per position (needs Redis on :6379; QUICK=1: fewer samples)
	$(PY) -m router.tooling.bench.recall_bench $(if $(QUICK),--quick)

bench-routing: $(STAMP)  ## policies in three load regimes and the llama.cpp profile's vs the oracle and the targets (3 seeded runs, < 25 min; QUICK=1: 1 run, < 5 min)
	$(PY) -m loadtests.compare_policies $(if $(QUICK),--quick)

bench-failover: $(STAMP)  ## one worker killed and restarted mid-run, per return-home option: errors, cut and resumed streams, resume pauses vs a control burst (~4 min; QUICK=1: ~1.5 min)
	$(PY) -m loadtests.failover $(if $(QUICK),--quick)

bench-processes: $(STAMP)  ## --processes 1 vs 2 vs vllm-router on the whole machine (needs wrk and Redis on :6379; ~9 min)
	@command -v wrk >/dev/null || { echo "bench-processes needs wrk: apt-get install -y wrk"; exit 2; }
	@test -x $(VENV)/bin/vllm-router || $(PY) -m pip install --quiet vllm-router
	$(PY) -m router.tooling.bench.processes_bench

bench-decision: $(STAMP)  ## placement decision cost with 64 workers (p50/p99)
	$(PY) -m router.tooling.bench.decision_cost

bench-limits: $(STAMP)  ## a light tenant's TTFT beside a heavy one on a saturated fleet, with and without fair admission; the limiter's cost on Redis (~8 min; QUICK=1: ~4 min)
	$(PY) -m loadtests.fairness $(if $(QUICK),--quick)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
