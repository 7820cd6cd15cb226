"""The DNS discovery source against real DNS servers on loopback (dnslib, in a thread): A and
AAAA records and SRV records become members, changes show in the next publish, and a failing
lookup is reported without ever publishing an empty list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from router.config import DnsDiscoverySettings, parse_nameserver, parse_settings
from router.errors import ConfigError
from router.fleet.discovery.base import Member
from router.fleet.discovery.dns import DnsSource
from tests.dns_zone import stop
from tests.waiting import RecordingSink, until

NAME = "vllm.test"
SRV_NAME = "_http._tcp.vllm.test"


def settings(nameserver: str, **fields: Any) -> DnsDiscoverySettings:
    base: dict[str, Any] = {"name": NAME, "port": 8000, "interval": 0.05, "timeout": 0.5}
    return DnsDiscoverySettings(**{**base, "nameservers": (nameserver,), **fields})


@asynccontextmanager
async def running(source: DnsSource) -> AsyncIterator[RecordingSink]:
    """The source's `run` as a task for the block; it must still be running at the end."""
    sink = RecordingSink()
    task = asyncio.create_task(source.run(sink))
    try:
        yield sink
    finally:
        assert not task.done(), "run() returned or raised before it was cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def member(hostport: str, engine: str = "vllm", scheme: str = "http") -> Member:
    return Member(name=hostport, url=f"{scheme}://{hostport}", engine=engine)


async def test_a_and_aaaa_records_become_members_at_the_configured_port(dns_server):
    zone, _, address = dns_server(
        f"{NAME}. 5 A 10.0.0.10\n{NAME}. 5 A 10.0.0.9\n"
        f"{NAME}. 5 AAAA fd00::7\nother.test. 5 A 10.9.9.9\n"
    )
    source = DnsSource(settings(address, scheme="https", engine="sglang"), "vllm")
    assert source.kind == "dns"
    async with running(source) as sink:
        await until(lambda: bool(sink.published))
    assert sink.published[0] == [
        member("10.0.0.9:8000", "sglang", "https"),
        member("10.0.0.10:8000", "sglang", "https"),
        member("[fd00::7]:8000", "sglang", "https"),
    ]
    assert sink.failures == []

    zone.zone = f"{NAME}. 5 AAAA fd00::8\n{NAME}. 5 AAAA fd00::7\n"  # no A records: fine
    source = DnsSource(settings(address, port=9000), "tgi")
    expected = [member("[fd00::7]:9000", "tgi"), member("[fd00::8]:9000", "tgi")]
    assert await source.lookup() == expected


async def test_srv_records_of_the_lowest_priority_become_members_at_their_own_ports(dns_server):
    zone, _, address = dns_server(
        f"{SRV_NAME}. 5 SRV 10 90 8002 b.test.\n"
        f"{SRV_NAME}. 5 SRV 10 10 8001 a.test.\n"
        f"{SRV_NAME}. 5 SRV 20 50 8003 c.test.\n"
    )
    source = DnsSource(settings(address, name=SRV_NAME, record="SRV", port=None), "vllm")
    async with running(source) as sink:
        await until(lambda: bool(sink.published))
    assert sink.published[0] == [member("a.test:8001"), member("b.test:8002")]
    assert {m.weight for m in sink.published[0]} == {1.0}

    zone.zone = f"{SRV_NAME}. 5 A 10.0.0.1\n"  # the name exists, without SRV records
    async with running(source) as sink:
        await until(lambda: bool(sink.failures))
    assert sink.failures[0] == f"DNS SRV lookup of {SRV_NAME} failed: no SRV records"
    assert sink.published == []


async def test_a_change_of_records_shows_in_the_next_publish(dns_server):
    zone, _, address = dns_server(f"{NAME}. 5 A 10.0.0.1\n{NAME}. 5 A 10.0.0.2\n")
    before = [member("10.0.0.1:8000"), member("10.0.0.2:8000")]
    after = [member("10.0.0.2:8000"), member("10.0.0.3:8000")]
    async with running(DnsSource(settings(address), "vllm")) as sink:
        await until(lambda: len(sink.published) >= 2)  # published every interval, unchanged
        zone.zone = f"{NAME}. 5 A 10.0.0.3\n{NAME}. 5 A 10.0.0.2\n"
        await until(lambda: sink.published[-1] == after)
    changed = sink.published.index(after)
    assert changed >= 2 and sink.published[:changed] == [before] * changed
    assert sink.failures == []


async def test_nxdomain_is_reported_keeps_the_last_list_and_recovery_publishes(dns_server):
    records = f"{NAME}. 5 A 10.0.0.1\n"
    zone, _, address = dns_server(records)
    async with running(DnsSource(settings(address), "vllm")) as sink:
        await until(lambda: bool(sink.published))
        zone.zone = "other.test. 5 A 10.0.0.9\n"
        await until(lambda: len(sink.failures) >= 3)  # reported at every lookup
        good = len(sink.published)
        await asyncio.sleep(0.2)
        assert len(sink.published) == good, "nothing is published while the name is gone"
        zone.zone = records
        await until(lambda: len(sink.published) > good)
    assert sink.failures[0] == f"DNS A/AAAA lookup of {NAME} failed: no such name (NXDOMAIN)"
    assert set(sink.failures) == {sink.failures[0]}
    assert [] not in sink.published
    assert sink.published[-1] == [member("10.0.0.1:8000")]


async def test_a_silent_server_is_a_timeout_and_recovery_publishes_again(dns_server):
    zone, _, address = dns_server(f"{NAME}. 5 A 10.0.0.1\n")
    async with running(DnsSource(settings(address, timeout=0.3), "vllm")) as sink:
        await until(lambda: bool(sink.published))
        zone.silent = True
        await until(lambda: bool(sink.failures))
        good = len(sink.published)
        zone.silent = False
        await until(lambda: len(sink.published) > good)
    assert sink.failures[0] == f"DNS A lookup of {NAME} failed: no answer within 0.3 s"
    assert [] not in sink.published
    assert sink.published[-1] == [member("10.0.0.1:8000")]


async def test_servfail_and_a_stopped_server_are_reported_never_an_empty_list(dns_server):
    zone, server, address = dns_server(f"{NAME}. 5 A 10.0.0.1\n")
    async with running(DnsSource(settings(address, timeout=0.3), "vllm")) as sink:
        await until(lambda: bool(sink.published))
        zone.rcode = "SERVFAIL"
        await until(lambda: bool(sink.failures))
        stop(server)
        await until(lambda: "no answer within" in sink.failures[-1])
    assert sink.failures[0] == (
        f"DNS A lookup of {NAME} failed: no nameserver answered: Do53:{address.replace(':', '@')}"
        " answered SERVFAIL"
    )
    assert sink.failures[-1] == f"DNS A lookup of {NAME} failed: no answer within 0.3 s"
    assert sink.published == [[member("10.0.0.1:8000")]] * len(sink.published)


async def test_nameservers_with_an_explicit_port_are_used_ipv4_and_ipv6(dns_server):
    _, _, first = dns_server(f"{NAME}. 5 A 10.0.0.1\n")
    _, _, second = dns_server(f"{NAME}. 5 A 10.0.0.2\n")
    _, _, over_ipv6 = dns_server(f"{NAME}. 5 AAAA fd00::6\n", host="::1")
    assert await DnsSource(settings(first), "vllm").lookup() == [member("10.0.0.1:8000")]
    assert await DnsSource(settings(second), "vllm").lookup() == [member("10.0.0.2:8000")]
    assert over_ipv6.startswith("[::1]:")
    assert await DnsSource(settings(over_ipv6), "vllm").lookup() == [member("[fd00::6]:8000")]


def test_nameserver_entries_parse_with_and_without_a_port():
    assert parse_nameserver("10.0.0.10") == ("10.0.0.10", 53)
    assert parse_nameserver("10.0.0.10:5353") == ("10.0.0.10", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]") == ("::1", 53)
    assert parse_nameserver("[fd00::a]:5353") == ("fd00::a", 5353)
    for bad in ("dns.local", "dns.local:53", "10.0.0.10:0", "10.0.0.10:x", "[::1", "[::1]x"):
        with pytest.raises(ValueError, match="is not an IP address"):
            parse_nameserver(bad)
    config = {
        "discovery": {"source": "dns", "dns": {"name": NAME, "port": 80, "nameservers": ["x.y"]}}
    }
    with pytest.raises(ConfigError, match=r"discovery\.dns\.nameservers.*'x\.y' is not an IP"):
        parse_settings(config)
