"""Structured logs and the access log, read from a real router process's stderr.

`logging.format: json` writes one JSON object per line for every record; the access log writes
one record per request at its end, with the session id only as a keyed hash."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from multidict import CIMultiDict

from router.tooling.launch import child_env, stop_process, wait_http_ok
from tests.conftest import SimFleet, chat_body

HASH_KEY = "access-log-test-key-0123456789"
SLOW = ("--time-scale", "1", "--decode-ms-per-token", "30", "--prefill-ms-per-token", "0")


@contextmanager
def logged_router(config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`kvrouter serve` on `config`, its stderr in a file; yields (URL, that file). The
    router is stopped (SIGTERM, so it logs its drain) before the block's caller reads on."""
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "router.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "--log-level", "INFO", "serve", "--config",
             str(path)],
            env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            url = f"http://{config['listen']}"
            wait_http_ok(url + "/readyz", proc=proc)
            yield url, log
        finally:
            stop_process(proc)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log as a JSON object; fails naming the first line that is not one."""
    records = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"line {number} of the log is not JSON: {line!r}")
        assert isinstance(record, dict), f"line {number} is JSON but not an object: {line!r}"
        records.append(record)
    return records


def access_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"] == "kvrouter.access"]


def keyed_hash(tenant: str, session: str, key: str = HASH_KEY) -> str:
    """The documented session hash: BLAKE2b-64 of tenant, 0x1f, session id, keyed."""
    raw = f"{tenant}\x1f{session}".encode()
    return hashlib.blake2b(raw, key=key.encode(), digest_size=8).hexdigest()


async def stream_chat(
    http: aiohttp.ClientSession, url: str, session: str, tokens: int
) -> CIMultiDict[str]:
    body = chat_body("Tell me a story", max_tokens=tokens, stream=True)
    async with http.post(
        url + "/v1/chat/completions", json=body, headers={"x-session-id": session}
    ) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers.copy()


def logging_on(fleet: SimFleet, fmt: str = "json") -> dict[str, Any]:
    return fleet.config(logging={"format": fmt, "access": {"enabled": True, "hash_key": HASH_KEY}})


async def test_every_line_is_json_and_each_request_has_one_access_record(
    sim_fleet: Callable[..., SimFleet], http: aiohttp.ClientSession, tmp_path: Path
):
    fleet = sim_fleet(2, *SLOW)
    with logged_router(logging_on(fleet), tmp_path) as (url, log):
        first = await stream_chat(http, url, "alice-secret-1", tokens=12)
        second = await stream_chat(http, url, "alice-secret-1", tokens=2)
        other = await stream_chat(http, url, "bob-secret-2", tokens=2)
        query = chat_body("Hi", max_tokens=2)
        async with http.post(url + "/v1/chat/completions?session_id=carol-secret-3",
                             json=query) as resp:  # fmt: skip
            assert resp.status == 200
            whole = resp.headers.copy()
        async with http.get(url + "/v2/nowhere") as resp:
            assert resp.status == 404
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
    text = log.read_text()
    records = json_lines(log)
    access = access_records(records)
    assert [r["status"] for r in access] == [200, 200, 200, 200, 404], access
    assert any(r["logger"] == "kvrouter" and r["level"] == "WARNING" for r in records)
    for secret in ("alice-secret-1", "bob-secret-2", "carol-secret-3"):
        assert secret not in text, f"the raw session id {secret} is in the log"

    one, two, three, four, missing = access
    assert one["session"] == two["session"] == keyed_hash("default", "alice-secret-1")
    assert three["session"] == keyed_hash("default", "bob-secret-2") != one["session"]
    assert four["session"] == keyed_hash("default", "carol-secret-3")
    answers = (first, second, other, whole)
    for record, headers in zip((one, two, three, four), answers, strict=True):
        assert record["request_id"] == headers["x-request-id"]
        assert record["worker"] == headers["x-kvrouter-worker"]
        assert record["route"] == headers["x-kvrouter-route"]
        assert record["tenant"] == "default"
        assert (record["method"], record["path"]) == ("POST", "/v1/chat/completions")
        assert 0 < record["first_byte_ms"] <= record["duration_ms"]
        assert record["bytes"] > 0 and record["client"] == "127.0.0.1"
    # 12 tokens at 30 ms each: the stream's first event comes long before its end
    assert one["duration_ms"] - one["first_byte_ms"] > 200, one
    assert missing["path"] == "/v2/nowhere" and "worker" not in missing
    assert "session" not in missing and missing["request_id"]


async def test_a_client_that_leaves_mid_stream_is_logged_as_499(
    sim_fleet: Callable[..., SimFleet], http: aiohttp.ClientSession, tmp_path: Path
):
    fleet = sim_fleet(1, *SLOW)
    with logged_router(logging_on(fleet), tmp_path) as (url, log):
        body = chat_body("Tell me a long story", max_tokens=200, stream=True)
        async with http.post(
            url + "/v1/chat/completions", json=body, headers={"x-session-id": "leaver"}
        ) as resp:
            await resp.content.readany()
            resp.close()
        for _ in range(300):
            if access_records(json_lines(log)):
                break
            await asyncio.sleep(0.01)
    (record,) = access_records(json_lines(log))
    assert record["status"] == 499 and record["session"] == keyed_hash("default", "leaver")
    assert record["duration_ms"] < 200 * 30


async def test_the_access_log_is_off_by_default(
    sim_fleet: Callable[..., SimFleet], http: aiohttp.ClientSession, tmp_path: Path
):
    fleet = sim_fleet(1, "--time-scale", "0")
    with logged_router(fleet.config(logging={"format": "json"}), tmp_path) as (url, log):
        await stream_chat(http, url, "quiet", tokens=2)
    records = json_lines(log)
    assert records, "the router logged nothing, not even its drain"
    assert access_records(records) == []


async def test_text_format_writes_access_records_as_key_value_lines(
    sim_fleet: Callable[..., SimFleet], http: aiohttp.ClientSession, tmp_path: Path
):
    fleet = sim_fleet(1, "--time-scale", "0")
    with logged_router(logging_on(fleet, "text"), tmp_path) as (url, log):
        headers = await stream_chat(http, url, "texty", tokens=2)
    lines = [ln for ln in log.read_text().splitlines() if " kvrouter.access: " in ln]
    assert len(lines) == 1, log.read_text()
    assert f"request_id={headers['x-request-id']} " in lines[0]
    assert f"session={keyed_hash('default', 'texty')} " in lines[0]
    assert " status=200 " in lines[0] and "texty" not in lines[0]


async def test_a_turn_the_router_keeps_the_history_of_is_logged_with_its_session_hash(
    sim_fleet: Callable[..., SimFleet], http: aiohttp.ClientSession, tmp_path: Path
):
    fleet = sim_fleet(1, "--time-scale", "0")
    config = logging_on(fleet)
    config["history"] = {"access": "open"}
    with logged_router(config, tmp_path) as (url, log):
        headers = {"x-kvrouter-history": "server", "x-session-id": "dora-secret-4"}
        async with http.post(
            url + "/v1/chat/completions", json=chat_body("Hi", max_tokens=2), headers=headers
        ) as resp:
            assert resp.status == 200
            served = resp.headers.copy()
    (record,) = access_records(json_lines(log))
    assert record["session"] == keyed_hash("default", "dora-secret-4")
    assert record["worker"] == served["x-kvrouter-worker"]
