"""Per-tenant rate limits against real routers, simulated workers and Redis, over HTTP: the 429
and its headers, tokens debited from usage or estimated, the orchestrator route counted, one
count shared by two router processes, and requests let through while Redis is down."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from router.config import parse_settings
from router.http.common import ROOT
from router.reload import effective
from router.server import running
from tests.conftest import RedisServer, chat_body, counted

TENANT = {"tenant_header": "x-tenant"}


async def chat(http, url: str, tenant: str, *, headers: dict | None = None, **body):
    """(status, headers, document) of one chat request as `tenant`."""
    sent = {"x-tenant": tenant, **(headers or {})}
    async with http.post(url + "/v1/chat/completions", json=chat_body(**body),
                         headers=sent) as resp:  # fmt: skip
        raw = await resp.read()
        document = orjson.loads(raw) if resp.content_type == "application/json" else raw
        return resp.status, resp.headers, document


async def test_a_tenant_past_its_requests_per_minute_gets_openais_429_and_others_go_on(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    limits = {"tenants": {
        "default": {"requests_per_minute": 2},
        "named": {"big": {"requests_per_minute": 100, "label": "gold"}},
    }}  # fmt: skip
    async with router_in_process(fleet.settings(session=TENANT, limits=limits)) as url:
        first = await chat(http, url, "acme")
        second = await chat(http, url, "acme")
        assert first[0] == second[0] == 200
        assert first[1]["x-ratelimit-limit-requests"] == "2"
        assert [first[1]["x-ratelimit-remaining-requests"],
                second[1]["x-ratelimit-remaining-requests"]] == ["1", "0"]  # fmt: skip
        assert second[1]["x-ratelimit-reset-requests"].endswith("s")
        status, headers, document = await chat(http, url, "acme")
        assert status == 429
        assert document["error"]["type"] == "requests"
        assert document["error"]["code"] == "rate_limit_exceeded"
        assert document["error"]["param"] is None
        assert "limit 2" in document["error"]["message"]
        assert 25 <= int(headers["Retry-After"]) <= 31, "the next request is back in 30 s"
        assert int(headers["retry-after-ms"]) > 25_000
        assert headers["x-ratelimit-remaining-requests"] == "0"
        for _ in range(3):
            async with http.get(url + "/v1/models", headers={"x-tenant": "other"}) as resp:
                assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers
        assert (await chat(http, url, "other"))[0] == 200, "the router's own endpoints count not"
        assert [(await chat(http, url, "big"))[0] for _ in range(3)] == [200, 200, 200]
        rejected = await counted(http, url, "kvrouter_limit_rejections_total",
                                 reason="rate_requests", tenant_class="other")  # fmt: skip
        assert rejected == 1
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        assert 'tenant_class="acme"' not in text and 'tenant_class="gold"' not in text


async def test_reply_tokens_come_from_usage_or_are_estimated_for_a_stream_without_it(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    limits = {"tenants": {"default": {"tokens_per_minute": 6000}}}  # 100 tokens a second
    async with router_in_process(fleet.settings(session=TENANT, limits=limits)) as url:
        status, _, document = await chat(http, url, "acme", max_tokens=12)
        assert status == 200
        used = document["usage"]["prompt_tokens"] + document["usage"]["completion_tokens"]
        status, headers, _ = await chat(http, url, "acme", max_tokens=1)
        remaining = int(headers["x-ratelimit-remaining-tokens"])
        assert 6000 - used <= remaining <= 6000 - used + 5, "debited before the next request"
        assert await counted(http, url, "kvrouter_rate_limit_tokens_total", source="usage") > used

        stream = {"stream": True, "max_tokens": 20}
        await chat(http, url, "acme", **stream)
        assert await counted(http, url, "kvrouter_rate_limit_tokens_total", source="estimate") > 0
        before = await counted(http, url, "kvrouter_rate_limit_tokens_total", source="usage")
        await chat(http, url, "acme", stream_options={"include_usage": True}, **stream)
        after = await counted(http, url, "kvrouter_rate_limit_tokens_total", source="usage")
        assert after - before > 20, "a stream that reports usage is debited by it"


async def test_a_reply_that_overshoots_the_tokens_per_minute_refuses_the_next_request(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    limits = {"tenants": {"named": {"acme": {"tokens_per_minute": 30}}}}
    async with router_in_process(fleet.settings(session=TENANT, limits=limits)) as url:
        assert (await chat(http, url, "acme", max_tokens=60))[0] == 200, "one reply overshoots"
        status, headers, document = await chat(http, url, "acme", max_tokens=1)
        assert status == 429 and document["error"]["type"] == "tokens"
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(headers["Retry-After"]) >= 60, "60+ tokens over at 0.5 a second"
        assert (await chat(http, url, "other", max_tokens=60))[0] == 200


async def test_orchestrator_requests_count_and_a_refused_turn_is_not_stored(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    limits = {"tenants": {"default": {"requests_per_minute": 1}}}
    settings = fleet.settings(session=TENANT, limits=limits, history={"access": "open"})
    server = {"x-kvrouter-history": "server", "x-session-id": "s1"}
    async with router_in_process(settings) as url:
        assert (await chat(http, url, "acme", headers=server, text="first"))[0] == 200
        status, _, _ = await chat(http, url, "acme", headers=server, text="second")
        assert status == 429
        async with http.get(url + "/v1/sessions/s1", headers={"x-tenant": "acme"}) as resp:
            assert resp.status == 200, "the sessions API is not counted"
            stored = await resp.json()
        users = [m["content"] for m in stored["messages"] if m["role"] == "user"]
        assert users == ["first"]


def shared_limit(redis_url: str, prefix: str, rpm: int) -> dict:
    return {
        "session": TENANT,
        "store": {"url": redis_url, "key_prefix": prefix},
        "limits": {"tenants": {"default": {"requests_per_minute": rpm}}},
    }


async def test_two_router_processes_on_one_redis_enforce_one_limit(
    sim_fleet, http, shared_redis_url, redis_prefix
):
    fleet = sim_fleet(1, "--time-scale", "0")
    sections = shared_limit(shared_redis_url, redis_prefix, 4)
    with fleet.router_process(**sections) as one, fleet.router_process(**sections) as two:
        statuses = [(await chat(http, router.url, "acme"))[0]
                    for router in (one, two, one, two, one, two)]  # fmt: skip
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert (await chat(http, two.url, "someone-else"))[0] == 200


async def test_requests_go_through_while_redis_is_down_and_the_failures_are_counted(
    sim_fleet, router_in_process, http, own_redis: RedisServer
):
    fleet = sim_fleet(1, "--time-scale", "0")
    sections = shared_limit(own_redis.url, "kvr", 1)
    sections["store"]["timeout"] = 0.3
    async with router_in_process(fleet.settings(**sections)) as url:
        assert (await chat(http, url, "acme"))[0] == 200
        assert (await chat(http, url, "acme"))[0] == 429
        own_redis.kill()
        started = time.monotonic()
        statuses = [(await chat(http, url, "acme"))[0] for _ in range(3)]
        assert statuses == [200, 200, 200], "fail open"
        assert time.monotonic() - started < 2.0, "each check bounded by its store timeout"
        assert await counted(http, url, "kvrouter_rate_limit_store_errors_total", op="check") >= 3
        own_redis.start()  # empty: the tenant starts with a full minute again

        async def enforced() -> bool:
            return (await chat(http, url, "acme"))[0] == 429

        for _ in range(100):
            if await enforced():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("limits not enforced again after Redis came back")


async def test_a_reload_sets_and_lifts_limits_on_a_running_router(sim_fleet, http):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(session=TENANT)
    async with running(settings, settings.host, settings.port) as runner:
        url, root = f"http://{settings.listen}", runner.app[ROOT]
        assert [(await chat(http, url, "acme"))[0] for _ in range(3)] == [200, 200, 200]
        raw = settings.model_dump(mode="json")
        raw["limits"]["tenants"] = {"default": {"requests_per_minute": 1}}
        root.reconfigure(effective(settings, parse_settings(raw, "reload", env={})))
        assert [(await chat(http, url, "acme"))[0] for _ in range(2)] == [200, 429]
        root.reconfigure(settings)
        assert (await chat(http, url, "acme"))[0] == 200
