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

# Two servers, 8 slots of 2,048 tokens each, one thread each: one core per server. With as many
# slots as a test has chats, no chat loses its slot to another (that, and the prompt cache
# taking over, is what `make bench-engine` measures, not what the tests pin down).
SETTINGS = LlamaSettings(slots=8, threads=1, context=16384, cache_ram_mib=64)
# A llama-server shares its one core between its compute thread and its HTTP threads (and, on a
# shared machine, with other work), so a busy one can take seconds to answer /health: probes
# get 2 s and three misses before the only server left is given up on. A dead server refuses
# connections at once, so it is still found out within a few probes (and by the requests).
ENGINE_HEALTH = {**FAST_HEALTH, "interval": 0.5, "timeout": 2.0, "fall": 3}
ROUTER_DEFAULTS = {"health": ENGINE_HEALTH, "shutdown_grace": 1}


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
