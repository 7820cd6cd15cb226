"""Hot reload on SIGHUP, on a router process under steady load: an invalid file changes
nothing; a valid one applies the difference, and a worker it removes drains: its existing
sessions stay on it until idle, new sessions go elsewhere, and no request fails."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from router.config import load_settings
from router.http.common import ROOT
from router.reload import Reloader
from router.root import Router
from router.server import running
from router.tooling.fleet import admin_url
from router.tooling.launch import free_port
from tests.conftest import chat_body, counted
from tests.integration.test_orchestrator import SERVER
from tests.integration.test_orchestrator import upstream as upstream  # the fixture

TOKEN = "r" * 24
AUTH = {"authorization": f"Bearer {TOKEN}"}


class SteadyLoad:
    """Sessions sent turn after turn, a few at a time, until stopped; every answer's status
    and worker are kept."""

    def __init__(self, http: Any, url: str, sessions: list[str]) -> None:
        self.http, self.url = http, url
        self.active = set(sessions)
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.last_worker: dict[str, str] = {}
        self._stop = asyncio.Event()

    async def turn(self, session: str) -> str:
        headers = {"x-session-id": session}
        async with self.http.post(
            self.url + "/v1/chat/completions", json=chat_body(stream=True), headers=headers
        ) as resp:
            body = await resp.read()
            self.statuses[resp.status] += 1
            if resp.status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
                self.errors.append(f"{session}: {resp.status} {body[-200:]!r}")
            worker = resp.headers.get("x-kvrouter-worker", "")
        self.last_worker[session] = worker
        return worker

    async def _client(self, index: int, clients: int) -> None:
        while not self._stop.is_set():
            mine = sorted(s for s in self.active if hash(s) % clients == index)
            for session in mine or ["idle"]:
                if mine:
                    await self.turn(session)
                else:
                    await asyncio.sleep(0.05)

    async def __aenter__(self) -> SteadyLoad:
        self._tasks = [asyncio.create_task(self._client(i, 4)) for i in range(4)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def workers(http: Any, admin: str) -> dict[str, dict[str, Any]]:
    async with http.get(admin + "/admin/workers", headers=AUTH) as resp:
        return {w["name"]: w for w in (await resp.json())["workers"]}


async def home_of(http: Any, admin: str, session: str) -> str:
    async with http.get(admin + f"/admin/sessions/{session}", headers=AUTH) as resp:
        return (await resp.json())["home"]


async def reload(proc: Any, http: Any, url: str, outcome: str, before: float) -> None:
    os.kill(proc.pid, signal.SIGHUP)
    for _ in range(100):
        if await counted(http, url, "kvrouter_config_reloads_total", outcome=outcome) > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {outcome} reload counted")


async def test_a_reload_under_load_refuses_a_bad_file_then_drains_a_removed_worker(
    sim_fleet, router_process, http, tmp_path: Path
):
    fleet = sim_fleet(3, "--time-scale", "0.02")
    config = fleet.config(
        admin={"token": TOKEN},
        routing={"policy": "consistent_hash", "slow_start": {"window": 0}},
        drain={"idle": 1.5, "timeout": 60, "check_interval": 0.1},
    )
    url, proc = router_process(config)
    admin = admin_url(config)
    path = tmp_path / f"router-{url.rpartition(':')[2]}.yaml"
    assert yaml.safe_load(path.read_text())["listen"] == config["listen"]
    sessions = [f"chat-{i}" for i in range(24)]
    async with SteadyLoad(http, url, sessions) as load:
        for _ in range(100):
            if len(load.last_worker) == len(sessions):
                break
            await asyncio.sleep(0.05)
        on_sim2 = sorted(s for s, w in load.last_worker.items() if w == "sim-2")
        assert on_sim2, load.last_worker

        broken = copy.deepcopy(config)
        broken["routing"]["policy"] = "fastest"
        path.write_text(yaml.safe_dump(broken))
        await reload(proc, http, url, "invalid", 0)
        listed = await workers(http, admin)
        assert sorted(listed) == ["sim-0", "sim-1", "sim-2"]
        assert all(w["state"] == "healthy" for w in listed.values())

        valid = copy.deepcopy(config)
        valid["workers"] = [w for w in config["workers"] if w["name"] != "sim-2"]
        valid["workers"][0]["weight"] = 2.0
        valid["listen"] = "127.0.0.1:1"  # needs a restart: logged, kept
        path.write_text(yaml.safe_dump(valid))
        await reload(proc, http, url, "applied", 0)
        listed = await workers(http, admin)
        assert listed["sim-0"]["weight"] == 2.0
        assert listed["sim-2"]["state"] == "draining"
        assert listed["sim-2"]["drain"] == {
            "reason": "removed", "for": listed["sim-2"]["drain"]["for"],
            "keeps_sessions": True, "remove": True,
        }  # fmt: skip

        # Existing sessions on sim-2 keep landing there; a new one homed there goes elsewhere.
        await asyncio.sleep(0.5)
        for session in on_sim2:
            assert await load.turn(session) == "sim-2"
        candidates = [f"new-{i}" for i in range(60)]
        newcomers = [s for s in candidates if await home_of(http, admin, s) == "sim-2"]
        assert newcomers
        for session in newcomers[:5]:
            assert await load.turn(session) in ("sim-0", "sim-1")

        # The sessions on sim-2 go quiet: after drain.idle the drain ends and sim-2 leaves.
        load.active -= set(on_sim2)
        for _ in range(100):
            if "sim-2" not in await workers(http, admin):
                break
            await asyncio.sleep(0.1)
        assert "sim-2" not in await workers(http, admin)
        for session in on_sim2:
            assert await load.turn(session) in ("sim-0", "sim-1")
        await asyncio.sleep(0.3)

    assert load.errors == [] and set(load.statuses) == {200}, load.errors[:3]
    assert sum(load.statuses.values()) > 100
    assert await counted(http, url, "kvrouter_drains_ended_total", how="idle") == 1
    assert await counted(http, url, "kvrouter_membership_changes_total", change="removed") == 1


async def test_a_refused_reload_logs_one_line_naming_the_key_and_changes_nothing(
    tmp_path: Path, caplog
):
    path = tmp_path / "router.yaml"
    config = {"workers": [{"url": "http://127.0.0.1:9", "name": "w"}]}
    path.write_text(yaml.safe_dump(config))
    root = Router(load_settings(path, env={}))
    reloader = Reloader(root, path)
    before = root.settings
    try:
        path.write_text(yaml.safe_dump({**config, "routing": {"policy": "fastest"}}))
        with caplog.at_level(logging.WARNING, logger="kvrouter.reload"):
            assert reloader.reload() is None
        (record,) = caplog.records
        assert record.levelno == logging.ERROR and "\n" not in record.getMessage()
        assert record.getMessage().startswith(
            f"reload refused, the running configuration stays: invalid configuration in {path}: "
            "routing.policy: Input should be"
        )
        assert root.settings is before
        caplog.clear()

        new = {**config, "routing": {"policy": "round_robin"}, "store": {"timeout": 2.0}}
        path.write_text(yaml.safe_dump(new))
        with caplog.at_level(logging.WARNING, logger="kvrouter.reload"):
            found = reloader.reload()
        assert found is not None and {c.key for c in found} == {"routing.policy", "store.timeout"}
        assert root.settings.routing.policy == "round_robin" and root.balancer.name == "round_robin"
        assert root.settings.store.timeout == before.store.timeout
        assert [r.getMessage() for r in caplog.records] == [
            "reload: store.timeout changed; it takes effect at the next restart",
            f"reload of {path} applied: routing.policy",
        ]
    finally:
        await root.stop()


async def test_a_reload_applies_history_access_and_trusted_proxies_to_the_next_request(
    upstream, http, tmp_path: Path
):
    path = tmp_path / "router.yaml"
    closed = {
        "listen": f"127.0.0.1:{free_port()}",
        "workers": [{"url": upstream.url, "name": "up"}],
        "history": {"access": "off"},
    }
    opened = {**closed, "history": {"access": "open"}, "proxy": {"trusted_proxies": ["127.0.0.1"]}}
    path.write_text(yaml.safe_dump(closed))
    settings = load_settings(path, env={})
    forged = {"X-Forwarded-For": "203.0.113.66", "x-session-id": "s"}

    async def turn(server: bool) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {**forged, **(SERVER if server else {})}
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def session_status() -> int:
        async with http.get(url + "/v1/sessions/s") as resp:
            return resp.status

    def forwarded_for() -> str:
        return {k.lower(): v for k, v in upstream.headers[-1].items()}["x-forwarded-for"]

    async with running(settings, settings.host, settings.port) as runner:
        url = f"http://{settings.listen}"
        reloader = Reloader(runner.app[ROOT], path)
        assert await turn(server=True) == 403 and await session_status() == 403
        assert await turn(server=False) == 200 and forwarded_for() == "127.0.0.1"

        path.write_text(yaml.safe_dump(opened))
        found = reloader.reload()
        assert found is not None and all(c.live for c in found)
        assert {c.key for c in found} == {"history.access", "proxy.trusted_proxies"}
        assert await turn(server=True) == 200 and forwarded_for() == "203.0.113.66, 127.0.0.1"
        assert await session_status() == 200

        path.write_text(yaml.safe_dump(closed))
        assert reloader.reload() is not None
        assert await turn(server=True) == 403 and await session_status() == 403
        assert await turn(server=False) == 200 and forwarded_for() == "127.0.0.1"
