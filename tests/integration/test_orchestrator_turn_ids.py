"""Which requests are one turn: a client id names a turn only together with its messages."""

from __future__ import annotations

from tests.integration.test_orchestrator import contents, say, settings_for, stored
from tests.integration.test_orchestrator import upstream as upstream  # the fixture


async def test_two_different_turns_with_the_same_request_id_are_both_stored_in_order(
    upstream, router_in_process, http
):
    async with router_in_process(settings_for(upstream.url)) as url:
        for text in ("q1", "q2"):
            assert (await say(http, url, "s", text, headers={"x-request-id": "gw-1"}))[0] == 200
            await stored(http, url, "s", turns=1 if text == "q1" else 2)
        assert (await say(http, url, "s", "q3"))[0] == 200
        document = (await stored(http, url, "s", turns=3))[1]
    assert contents(document["messages"]) == [
        "q1", "reply to q1", "q2", "reply to q2", "q3", "reply to q3",
    ]  # fmt: skip
    assert len({t["id"] for t in document["turns"]}) == 3
    assert contents(upstream.prompts[1]) == ["q1", "reply to q1", "q2"]


async def test_two_different_turns_with_the_same_idempotency_key_are_both_stored(
    upstream, router_in_process, http
):
    async with router_in_process(settings_for(upstream.url)) as url:
        key = {"Idempotency-Key": "k-1"}
        assert (await say(http, url, "s", "q1", headers=key))[0] == 200
        await stored(http, url, "s", turns=1)
        assert (await say(http, url, "s", "q2", headers=key))[0] == 200
        document = (await stored(http, url, "s", turns=2))[1]
    assert contents(document["messages"]) == ["q1", "reply to q1", "q2", "reply to q2"]


async def test_a_retried_turn_with_the_same_request_id_is_stored_once(
    upstream, router_in_process, http
):
    async with router_in_process(settings_for(upstream.url)) as url:
        retry = {"x-request-id": "req-7"}
        assert (await say(http, url, "s", "q1", headers=retry))[0] == 200
        await stored(http, url, "s", turns=1)
        assert (await say(http, url, "s", "q1", headers=retry))[0] == 200
        assert (await say(http, url, "s", "q2"))[0] == 200
        document = (await stored(http, url, "s", turns=2))[1]
    assert contents(document["messages"]) == ["q1", "reply to q1", "q2", "reply to q2"]
    assert contents(upstream.prompts[1]) == ["q1"], "a retry is sent as its own turn again"


async def test_without_a_client_id_each_request_is_its_own_turn(upstream, router_in_process, http):
    async with router_in_process(settings_for(upstream.url)) as url:
        for turns in (1, 2):
            assert (await say(http, url, "s", "same"))[0] == 200
            await stored(http, url, "s", turns=turns)
        document = (await stored(http, url, "s", turns=2))[1]
    assert contents(document["messages"]) == ["same", "reply to same", "same", "reply to same"]
