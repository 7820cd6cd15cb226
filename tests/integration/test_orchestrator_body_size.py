"""What a turn weighs: every part of a message is counted, and no body over the router's own
limit is sent upstream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import healthy, serving
from tests.integration.test_orchestrator import SERVER, completion, settings_for, stored

MiB = 1024 * 1024
LIMIT = 16 * MiB  # limits.max_body_bytes, the default


class SizingUpstream:
    """Records the size of every body it is sent and what each message carried."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.prompts: list[list[str]] = []

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.sizes.append(len(body))
        messages = orjson.loads(body)["messages"]
        self.prompts.append([label(m) for m in messages])
        return web.json_response(completion(f"seen {len(self.sizes)}"))


def label(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "+".join(p.get("text") or p["type"] for p in content)
    return str(content)[:20]


@pytest.fixture
async def sizing():
    fake = SizingUpstream()
    app = web.Application(client_max_size=64 * MiB)
    app.router.add_get("/health", healthy)
    app.router.add_post("/v1/chat/completions", fake.chat)
    async with serving(app) as url:
        yield fake, url


def image_message(text: str, data_bytes: int) -> dict[str, Any]:
    url = "data:image/png;base64," + "A" * data_bytes
    return {"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}},
    ]}  # fmt: skip


async def send(http, url, *messages: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {"model": "m", "messages": list(messages), "max_tokens": 16}
    headers = {**SERVER, "x-session-id": "s"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_six_turns_with_a_3_mb_image_never_send_a_body_over_the_limit(
    sizing, router_in_process, http
):
    upstream, worker = sizing
    history = {"max_prompt_tokens": 100_000_000}  # only the body limit prunes here
    store = {"max_session_bytes": 64 * MiB}  # room to store all six (the default caps at 8 MiB)
    async with router_in_process(settings_for(worker, history=history, store=store)) as url:
        for turn in range(6):
            status, answer = await send(http, url, image_message(f"look {turn}", 3_000_000))
            assert status == 200, answer
            document = (await stored(http, url, "s", turns=turn + 1))[1]
    assert max(upstream.sizes) <= LIMIT, upstream.sizes
    assert all(t["tokens"] > 3_000_000 // 4 for t in document["turns"]), "the image is counted"
    assert document["tokens"] > 6 * 3_000_000 // 4
    last = upstream.prompts[-1]
    assert last[-1] == "look 5+image_url" and "look 0+image_url" not in last
    assert last == ["look 1+image_url", "seen 2", "look 2+image_url", "seen 3",
                    "look 3+image_url", "seen 4", "look 4+image_url", "seen 5",
                    "look 5+image_url"][-len(last):]  # fmt: skip
    assert len(last) < 11, "older image turns are pruned"


async def test_a_message_over_the_body_limit_is_a_413_naming_it_and_nothing_is_stored(
    sizing, router_in_process, http
):
    upstream, worker = sizing
    settings = settings_for(worker, limits={"max_body_bytes": 256 * 1024},
                            history={"max_prompt_tokens": 10_000_000})  # fmt: skip
    async with router_in_process(settings) as url:
        status, answer = await send(http, url, image_message("too big", 300 * 1024))
        assert status == 413
        assert answer["error"]["type"] == "invalid_request_error"
        assert "limits.max_body_bytes" in answer["error"]["message"]
        assert (await stored(http, url, "s"))[0] == 404
    assert upstream.sizes == []


async def test_a_system_prompt_and_message_over_the_limit_together_are_a_413_not_forwarded(
    sizing, router_in_process, http
):
    upstream, worker = sizing
    settings = settings_for(worker, limits={"max_body_bytes": 256 * 1024},
                            history={"max_prompt_tokens": 10_000_000})  # fmt: skip
    async with router_in_process(settings) as url:
        system = {"role": "system", "content": "word " * 30_000}
        assert (await send(http, url, system, {"role": "user", "content": "hi"}))[0] == 200
        await stored(http, url, "s", turns=1)
        status, answer = await send(http, url, image_message("and this", 150 * 1024))
        assert status == 413, answer
        assert answer["error"]["code"] == "payload_too_large"
        assert "limits.max_body_bytes" in answer["error"]["message"]
    assert len(upstream.sizes) == 1 and max(upstream.sizes) <= 256 * 1024
