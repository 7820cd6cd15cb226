"""A real DNS server on loopback for tests (dnslib, in a thread), serving records the test
changes as it goes; `dns_server` is the fixture (registered in conftest)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dnslib import RCODE, RR, DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Zone(BaseResolver):
    """A DNS server's records, which the test changes between lookups: names not in `zone`
    are NXDOMAIN; `rcode` answers every query with that error; `silent` drops every query."""

    def __init__(self, zone: str = "") -> None:
        self.zone = zone
        self.rcode: str | None = None
        self.silent = False

    def resolve(self, request: Any, handler: Any) -> Any:
        if self.silent:
            raise DNSError("dropped")  # the handler sends nothing back
        reply = request.reply()
        if self.rcode is not None:
            reply.header.rcode = getattr(RCODE, self.rcode)
            return reply
        records = RR.fromZone(self.zone) if self.zone.strip() else []
        named = [rr for rr in records if rr.rname == request.q.qname]
        if not named:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in named:
            if rr.rtype == request.q.qtype:
                reply.add_answer(rr)
        return reply


@pytest.fixture
def dns_server() -> Iterator[Callable[..., tuple[Zone, DNSServer, str]]]:
    """Factory: `zone, server, address = dns_server("zone text")` serves UDP on a free port of
    `host`; `address` is its `HOST:PORT` for `nameservers`. Stopped at the end."""
    started: list[DNSServer] = []

    def start(zone: str = "", host: str = "127.0.0.1") -> tuple[Zone, DNSServer, str]:
        records = Zone(zone)
        server = DNSServer(records, address=host, port=0, logger=DNSLogger(logf=lambda _s: None))
        threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        started.append(server)
        port = server.server.server_address[1]
        return records, server, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    yield start
    for server in started:
        stop(server)


def stop(server: DNSServer) -> None:
    server.server.shutdown()
    server.server.server_close()
