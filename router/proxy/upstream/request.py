"""What goes on the wire to a worker: where it listens, and a request encoded as bytes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDict

WIRE_TEXT = ("utf-8", "surrogateescape")
"""How header text maps to bytes both ways: any byte survives a round trip."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a worker listens: what connections are pooled by."""

    host: str
    port: int
    tls: bool
    host_header: str

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        return cls(host, port, tls, parts.netloc.rpartition("@")[2] or host)


def encode_request(
    method: str, target: str, origin: Origin, headers: CIMultiDict[str], body: bytes
) -> bytes:
    """The request as it goes on the wire: the caller's headers, Host and Content-Length set
    here (the caller must have removed hop-by-hop ones)."""
    text = [f"{name}: {value}\r\n" for name, value in headers.items()]
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        text.append(f"Content-Length: {len(body)}\r\n")
    head = f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n{''.join(text)}\r\n"
    return head.encode(*WIRE_TEXT) + body
