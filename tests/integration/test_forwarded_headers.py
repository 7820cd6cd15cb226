"""Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) as a worker receives them:
a client's own are believed only from a peer in `proxy.trusted_proxies`. Real sockets."""

from __future__ import annotations

from typing import Any

from router.config import parse_settings
from router.tooling.launch import free_port
from tests.integration.test_orchestrator import SERVER, settings_for
from tests.integration.test_orchestrator import upstream as upstream  # the fixture
from tests.integration.test_proxy import echo_upstream as echo_upstream  # the fixture
from tests.raw_http import RecordingWorker, get, send_raw

FORGED = {
    "X-Forwarded-For": "203.0.113.66",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "Forwarded": "for=203.0.113.66;host=evil.example;proto=https",
    "X-Real-IP": "203.0.113.66",
}


def settings(url: str, **proxy: Any):
    raw = {"listen": f"127.0.0.1:{free_port()}", "workers": [{"url": url, "name": "echo"}],
           "proxy": proxy}  # fmt: skip
    return parse_settings(raw, "test", env={})


async def seen_by_worker(http, url: str, headers: dict[str, str]) -> dict[str, str]:
    async with http.post(url + "/v1/anything", json={}, headers=headers) as resp:
        assert resp.status == 200
        return {k.lower(): v for k, v in (await resp.json())["headers"].items()}


async def test_an_untrusted_client_cannot_forge_forwarding_headers(
    echo_upstream, router_in_process, http
):
    for trusted in ([], ["10.0.0.0/8", "fd00::/8"]):  # the default, and proxies elsewhere
        async with router_in_process(settings(echo_upstream, trusted_proxies=trusted)) as url:
            sent = await seen_by_worker(http, url, FORGED)
        host = url.removeprefix("http://")
        assert sent["x-forwarded-for"] == "127.0.0.1", sent
        assert sent["x-forwarded-host"] == host and sent["x-forwarded-proto"] == "http", sent
        assert not {"forwarded", "x-real-ip", "x-forwarded-port"} & set(sent), sent


async def test_a_trusted_proxy_s_forwarding_headers_are_kept_and_appended_to(
    echo_upstream, router_in_process, http
):
    async with router_in_process(settings(echo_upstream, trusted_proxies=["127.0.0.0/8"])) as url:
        sent = await seen_by_worker(http, url, FORGED)
        plain = await seen_by_worker(http, url, {})
    assert sent["x-forwarded-for"] == "203.0.113.66, 127.0.0.1"
    assert sent["x-forwarded-host"] == "evil.example" and sent["x-forwarded-proto"] == "https"
    assert sent["forwarded"] == FORGED["Forwarded"] and sent["x-real-ip"] == "203.0.113.66"
    assert sent["x-forwarded-port"] == "443"
    assert plain["x-forwarded-for"] == "127.0.0.1" and plain["x-forwarded-proto"] == "http"
    assert plain["x-forwarded-host"] == url.removeprefix("http://")


async def test_orchestrator_requests_get_the_same_treatment(upstream, router_in_process, http):
    async with router_in_process(settings_for(upstream.url)) as url:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {**SERVER, "x-session-id": "s", **FORGED}
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
    (sent,) = [{k.lower(): v for k, v in h.items()} for h in upstream.headers]
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == url.removeprefix("http://")
    assert not {"forwarded", "x-real-ip", "x-forwarded-port"} & set(sent), sent


async def test_the_worker_gets_the_clients_headers_in_order_with_one_request_id(router_in_process):
    """Exactly the header lines a worker receives: the client's end-to-end headers in their
    order (repeats kept), the request id in place of its first `x-request-id` and no second
    one, hop-by-hop ones and those named by Connection gone, the forwarding headers last."""
    async with RecordingWorker() as worker:
        async with router_in_process(settings(worker.url)) as url:
            port = int(url.rpartition(":")[2])
            answer = await send_raw(port, get(
                "/v1/anything", b"Connection: keep-alive, X-Secret", b"X-Secret: hop",
                b"x-session-id: s1", b"X-Request-Id: req-7", b"Accept: a/b", b"Accept: c/d",
                b"x-request-id: second", b"Keep-Alive: timeout=5", b"X-Forwarded-Port: 1",
                b"Authorization: Bearer passed-on",
            ))  # fmt: skip
    assert answer.status == 200
    lines = worker.requests[0].split(b"\r\n")
    assert lines[0] == b"GET /v1/anything HTTP/1.1"
    assert [line for line in lines[1:] if line] == [
        b"Host: 127.0.0.1:" + str(worker.port).encode(),
        b"x-session-id: s1",
        b"x-request-id: req-7",
        b"Accept: a/b",
        b"Accept: c/d",
        b"Authorization: Bearer passed-on",
        b"X-Forwarded-For: 127.0.0.1",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: router.test",  # the Host the client sent
    ]
