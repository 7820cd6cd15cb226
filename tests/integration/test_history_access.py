"""Who may use stored history (`history.access`): the sessions API and orchestrator requests,
as a hostile client sees them. Real router, real upstream, real sockets."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from router.config import Settings, parse_settings
from router.http.auth import key_digest
from router.tooling.launch import free_port
from tests.integration.test_orchestrator import SERVER, contents, stored
from tests.integration.test_orchestrator import upstream as upstream  # the fixture

KEYS = [{"tenant": "acme", "sha256": key_digest("sk-acme")},
        {"tenant": "globex", "sha256": key_digest("sk-globex")}]  # fmt: skip
ACME = {"Authorization": "Bearer sk-acme"}
GLOBEX = {"Authorization": "Bearer sk-globex"}


def settings_for(url: str, **overrides: Any) -> Settings:
    """The router's defaults but for `overrides`: here `history.access` is what is tested."""
    raw = {"listen": f"127.0.0.1:{free_port()}", "workers": [{"url": url, "name": "up"}]}
    return parse_settings({**raw, **overrides}, "test", env={})


async def chat(http, url, session, text, headers=None, *, server=True):
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    hdrs = {**(SERVER if server else {}), "x-session-id": session, **(headers or {})}
    async with http.post(url + "/v1/chat/completions", json=body, headers=hdrs) as resp:
        return resp.status, orjson.loads(await resp.read())


async def delete(http, url, session, headers=None):
    async with http.delete(f"{url}/v1/sessions/{session}", headers=headers) as resp:
        return resp.status, await resp.json()


def refused(status: int, document: dict, *words: str) -> bool:
    error = document["error"]
    return (
        status == 403
        and error["code"] == "history_access_denied"
        and error["type"] == "invalid_request_error"
        and all(w in error["message"] for w in words)
    )


async def test_by_default_without_api_keys_nobody_reads_extends_or_deletes_stored_history(
    upstream, router_in_process, http
):
    """The defaults: no keys, no tenant header. A guessed session id gives nothing away."""
    async with router_in_process(settings_for(upstream.url)) as url:
        status, document = await chat(http, url, "victim-1", "my secret")
        assert refused(status, document, "history.access: keys", "auth.keys"), document
        status, document = await stored(http, url, "victim-1")
        assert refused(status, document, "history.access"), document
        assert refused(*await delete(http, url, "victim-1"), "history.access")
        # client-kept history is untouched by the setting
        assert (await chat(http, url, "victim-1", "hello", server=False))[0] == 200
    assert [contents(p) for p in upstream.prompts] == [["hello"]], "a refused turn was sent"


async def test_access_off_refuses_even_a_request_with_a_valid_key_and_a_route_default(
    upstream, router_in_process, http
):
    history = {"access": "off", "server_routes": ["/v1/chat/completions"]}
    settings = settings_for(upstream.url, history=history, auth={"keys": KEYS})
    async with router_in_process(settings) as url:
        status, document = await chat(http, url, "s", "q", ACME)
        assert refused(status, document, "history.access: off", "x-kvrouter-history"), document
        status, document = await chat(http, url, "s", "q", ACME, server=False)
        assert refused(status, document, "history.access: off"), "the route default is refused"
        assert refused(*await stored(http, url, "s", ACME), "history.access: off")
        assert refused(*await delete(http, url, "s", ACME), "history.access: off")
        client = {**ACME, "x-kvrouter-history": "client"}
        assert (await chat(http, url, "s", "own history", client, server=False))[0] == 200
    assert [contents(p) for p in upstream.prompts] == [["own history"]]


async def test_with_keys_a_tenant_header_never_reaches_another_tenants_history(
    upstream, router_in_process, http
):
    """acme stores a conversation; globex, with its own valid key and a tenant header naming
    acme, can neither read, extend, replay nor delete it; without a key nothing is served."""
    settings = settings_for(
        upstream.url, history={"access": "keys"}, auth={"keys": KEYS},
        session={"tenant_header": "x-tenant"},
    )  # fmt: skip
    async with router_in_process(settings) as url:
        assert (await chat(http, url, "s", "acme secret", ACME))[0] == 200
        await stored(http, url, "s", ACME, turns=1)
        forged = {**GLOBEX, "x-tenant": "acme"}
        assert (await stored(http, url, "s", forged))[0] == 404
        assert (await delete(http, url, "s", forged))[0] == 404
        assert (await chat(http, url, "s", "globex question", forged))[0] == 200
        assert "acme secret" not in contents(upstream.prompts[-1]), "acme's history replayed"
        document = (await stored(http, url, "s", ACME, turns=1))[1]
        assert contents(document["messages"]) == ["acme secret", "reply to acme secret"]
        for headers in ({}, {"x-tenant": "acme"}):
            assert (await stored(http, url, "s", headers))[0] == 401
            assert (await chat(http, url, "s", "anonymous", headers))[0] == 401
            assert (await delete(http, url, "s", headers))[0] == 401
        assert (await stored(http, url, "s", ACME))[0] == 200


async def test_access_open_takes_the_claimed_tenant_and_warns_at_start(
    upstream, router_in_process, http, caplog
):
    settings = settings_for(
        upstream.url, history={"access": "open"}, session={"tenant_header": "x-tenant"}
    )
    with caplog.at_level(logging.WARNING, logger="kvrouter"):
        async with router_in_process(settings) as url:
            acme = {"x-tenant": "acme"}
            assert (await chat(http, url, "s", "acme q", acme))[0] == 200
            assert (await stored(http, url, "s", acme, turns=1))[0] == 200
            assert (await stored(http, url, "s"))[0] == 404  # the default tenant's s
    warnings = [r.getMessage() for r in caplog.records if "history.access is open" in r.message]
    assert len(warnings) == 1 and "x-tenant" in warnings[0] and "trusted network" in warnings[0]
