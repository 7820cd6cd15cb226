"""Workers from DNS: a name's addresses, or its SRV records, looked up on an interval.

With `record: A` the A and AAAA records of `name` are queried at once; each address is a
worker at `port` (`10.0.0.7:8000`, `[fd00::7]:8000`). One family having nothing (no such
records, or NXDOMAIN) is normal when the other has addresses; any other error in either family
fails the lookup, so that a dual-stack fleet never loses half its workers to one bad answer.
With `record: SRV` each SRV record of the lowest priority present is a worker at its target
and its own port: as RFC 2782 has it, records of a higher priority number are fallbacks, not
part of the fleet. SRV weights are not used (Kubernetes gives every record the same weight);
every worker has weight 1. A target of "." (RFC 2782: the service is not available) is no
worker.

The first lookup runs at once, the next ones `interval` apart. Each one that finds workers
publishes the whole list, sorted. A lookup that finds none (NXDOMAIN, no records), times out
(`timeout` bounds each query), gets SERVFAIL or any other resolver error is reported with
`sink.failed` and publishes nothing, so the membership keeps the last good list (and logs the
failing stretch once, and its end).

`nameservers` replaces the system's resolv.conf: each is an IP address, with a port or without
(53): `10.0.0.10`, `10.0.0.10:5353`, `::1`, `[::1]:5353`. With the system's configuration a
name without a trailing dot is looked up through its search list, as the C library would; with
explicit nameservers the name is taken as absolute. Queries run on the event loop through
dnspython's asyncio resolver; nothing blocks it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from router.config import DnsDiscoverySettings, parse_nameserver
from router.fleet.discovery.base import Member, Sink

log = logging.getLogger("kvrouter.discovery.dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsLookupFailed(Exception):
    """A lookup found no workers; the message is the one line `sink.failed` gets."""


def _hostport(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


@dataclass(frozen=True, slots=True)
class _Records:
    """What one query found: its records, and whether the name exists at all."""

    rdata: tuple[Any, ...]
    nxdomain: bool = False


class DnsSource:
    """Looks `settings.name` up every `settings.interval` and reports to a sink."""

    kind = "dns"

    def __init__(self, settings: DnsDiscoverySettings, default_engine: str) -> None:
        self._settings = settings
        self._engine = settings.engine or default_engine
        self._nameservers = [parse_nameserver(entry) for entry in settings.nameservers]
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def run(self, sink: Sink) -> None:
        """Look up, publish or report, wait `interval`; until cancelled. The sink (the
        membership) logs a failing stretch once, and its end."""
        while True:
            try:
                members = await self.lookup()
            except DnsLookupFailed as err:
                log.debug("%s", err)
                sink.failed(str(err))
            else:
                sink.publish(members)
            await asyncio.sleep(self._settings.interval)

    async def lookup(self) -> list[Member]:
        """One lookup: the whole list, sorted and never empty; raises DnsLookupFailed."""
        resolver = await self._ready_resolver()
        if self._settings.record == "SRV":
            return self._srv_members(await self._query(resolver, "SRV"))
        found = await asyncio.gather(
            self._query(resolver, "A"), self._query(resolver, "AAAA"), return_exceptions=True
        )
        for result in found:
            if isinstance(result, BaseException):
                raise result
        return self._address_members([r for r in found if isinstance(r, _Records)])

    def _address_members(self, found: list[_Records]) -> list[Member]:
        addresses = {ipaddress.ip_address(rdata.address) for r in found for rdata in r.rdata}
        if not addresses:
            nxdomain = all(records.nxdomain for records in found)
            raise self._failed(
                "A/AAAA", "no such name (NXDOMAIN)" if nxdomain else "no A or AAAA records"
            )
        settings, port = self._settings, self._settings.port
        assert port is not None  # the settings require a port with record A
        return [
            Member(
                name=_hostport(address, port),
                url=f"{settings.scheme}://{_hostport(address, port)}",
                engine=self._engine,
            )
            for address in sorted(addresses, key=lambda a: (a.version, a))
        ]

    def _srv_members(self, records: _Records) -> list[Member]:
        targets = [
            (rdata.priority, rdata.target.to_text(omit_final_dot=True).lower(), rdata.port)
            for rdata in records.rdata
            if rdata.target != dns.name.root
        ]
        if not targets:
            raise self._failed(
                "SRV", "no such name (NXDOMAIN)" if records.nxdomain else "no SRV records"
            )
        lowest = min(priority for priority, _, _ in targets)
        chosen = sorted({(host, port) for priority, host, port in targets if priority == lowest})
        return [
            Member(
                name=f"{host}:{port}",
                url=f"{self._settings.scheme}://{host}:{port}",
                engine=self._engine,
            )
            for host, port in chosen
        ]

    async def _query(self, resolver: dns.asyncresolver.Resolver, rdtype: str) -> _Records:
        """The `rdtype` records of the name, none when it has none or does not exist; raises
        DnsLookupFailed for anything else (timeout, SERVFAIL, refused, a bad answer)."""
        try:
            async with asyncio.timeout(self._settings.timeout):  # the lifetime, to the letter
                answer = await resolver.resolve(
                    self._settings.name,
                    rdtype,
                    raise_on_no_answer=False,
                    search=not self._nameservers,
                )
        except dns.resolver.NXDOMAIN:
            return _Records((), nxdomain=True)
        except (dns.exception.Timeout, TimeoutError):
            raise self._failed(rdtype, f"no answer within {self._settings.timeout:g} s") from None
        except dns.resolver.NoNameservers as err:
            errors = err.kwargs.get("errors") or []
            said = "; ".join(f"{error[0]} answered {error[3]}" for error in errors)
            raise self._failed(rdtype, f"no nameserver answered: {said or 'none to ask'}") from None
        except (dns.exception.DNSException, OSError) as err:
            raise self._failed(rdtype, _one_line(err)) from None
        return _Records(tuple(answer.rrset or ()))

    async def _ready_resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use (so that a missing resolv.conf is a failed lookup,
        retried, rather than an error at start); resolv.conf is read off the event loop."""
        if self._resolver is not None:
            return self._resolver
        try:
            if self._nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
            else:
                resolver = await asyncio.to_thread(dns.asyncresolver.Resolver)
        except dns.exception.DNSException as err:
            what = f"no resolver configuration: {_one_line(err)}"
            raise self._failed(self._record_types(), what) from None
        if self._nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in self._nameservers
            ]
        resolver.cache = None
        resolver.lifetime = self._settings.timeout
        # each nameserver gets a share of the lifetime, so one silent server does not use it all
        resolver.timeout = self._settings.timeout / max(1, len(resolver.nameservers))
        self._resolver = resolver
        return resolver

    def _record_types(self) -> str:
        return "SRV" if self._settings.record == "SRV" else "A/AAAA"

    def _failed(self, rdtype: str, what: str) -> DnsLookupFailed:
        return DnsLookupFailed(f"DNS {rdtype} lookup of {self._settings.name} failed: {what}")
