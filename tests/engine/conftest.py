"""Real llama.cpp servers for the engine tests (`make test-engine`).

The servers come from the cached build (`python -m router.tooling.engine.build`); without it
every test here fails saying how to make it, never skips. One fleet of two servers serves the
whole session; a test that kills a server starts it again before it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.tooling.engine.build import EngineNotBuilt
from router.tooling.fleet import LlamaSettings, LocalFleet
from tests.conftest import FAST_HEALTH

# Two servers, 4 slots of 2,048 tokens each, one thread each: one core per server.
SETTINGS = LlamaSettings(slots=4, threads=1, context=8192, cache_ram_mib=64)
# A busy llama-server answers /health and /metrics between batch steps, so on a loaded machine
# it can take longer than the simulated worker's 0.3 s: probes get 1 s, and three misses.
ROUTER_DEFAULTS = {"health": {**FAST_HEALTH, "timeout": 1.0, "fall": 3}, "shutdown_grace": 1}


@pytest.fixture(scope="session")
def llama_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    logs: Path = tmp_path_factory.mktemp("llama-logs")
    try:
        fleet = LocalFleet.llama(2, SETTINGS, router_defaults=ROUTER_DEFAULTS, logs=logs)
    except EngineNotBuilt as err:
        pytest.fail(str(err), pytrace=False)
    with fleet:
        yield fleet


@pytest.fixture
def fleet(llama_fleet: LocalFleet) -> Iterator[LocalFleet]:
    """The session's servers, each running and with an empty cache when the test starts."""
    for worker in llama_fleet.workers:
        if worker.running:
            worker.reset_cache()
        else:
            worker.start()
    yield llama_fleet
