"""The load monitor reads llama.cpp's own metric names: with more requests than the server has
slots, `llamacpp:requests_processing` shows the slots busy and `llamacpp:requests_deferred` the
rest waiting, and the router learns the server's batch limit (its slot count) from them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from router.config import parse_settings
from router.tooling.fleet import LocalFleet, admin_url, router_config, router_in_process
from tests.engine.chat import chat
from tests.engine.conftest import ROUTER_DEFAULTS, SETTINGS

TOKEN = "engine-admin-token-0123"


async def test_the_monitor_reads_busy_slots_and_deferred_requests(fleet: LocalFleet) -> None:
    server = fleet.workers[0]
    config = router_config(
        [(server.name, server.url)], **ROUTER_DEFAULTS, engine="llamacpp",
        admin={"token": TOKEN}, load={"interval": 0.1, "jitter": 0.1, "timeout": 1.0},
    )  # fmt: skip
    settings = parse_settings(config, "engine test", env={})
    admin = admin_url(settings) + "/admin/workers"
    seen: list[dict[str, Any]] = []

    async with router_in_process(settings) as url, aiohttp.ClientSession() as http:
        messages = [{"role": "user", "content": "Count slowly to a thousand."}]
        requests = [
            asyncio.create_task(chat(http, url, messages, max_tokens=200,
                                     headers={"x-session-id": f"load-{i}"}))
            for i in range(SETTINGS.slots + 2)
        ]  # fmt: skip
        async with asyncio.timeout(60):
            while not all(r.done() for r in requests):
                async with http.get(admin, headers={"authorization": f"Bearer {TOKEN}"}) as resp:
                    seen.append((await resp.json())["workers"][0]["load"])
                await asyncio.sleep(0.05)
        replies = [r.result() for r in requests]

    assert all(r.status == 200 for r in replies)
    # Every slot busy and the two requests beyond them deferred, as the server itself said.
    assert {"running": SETTINGS.slots, "waiting": 2, "fresh": True} in [
        {key: s[key] for key in ("running", "waiting", "fresh")} for s in seen
    ], seen
    assert seen[-1]["batch_limit"] == SETTINGS.slots, seen[-5:]
