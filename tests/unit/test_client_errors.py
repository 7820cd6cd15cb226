"""The rate-limited log of what clients get wrong."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, TransferEncodingError

from router.http.client_errors import RateLimitedLog, client_fault, describe


def test_one_line_per_interval_per_kind_and_the_next_counts_those_left_out(caplog):
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("t"), 1.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO)
    assert limited.log(logging.INFO, "a", "first %s", "a")
    assert limited.log(logging.INFO, "b", "first %s", "b")
    for _ in range(5):
        now[0] += 0.1
        assert not limited.log(logging.INFO, "a", "again")
    now[0] += 0.6
    assert limited.log(logging.INFO, "a", "later")
    assert [r.getMessage() for r in caplog.records] == [
        "first a", "first b", "later (5 more like it since the last line were not logged)",
    ]  # fmt: skip


def test_client_faults_are_parse_errors_also_behind_a_payload_error():
    bad = BadHttpMessage("Duplicate Content-Length:\n\n  b'Content-Length: 4'\n  ^")
    assert client_fault(bad) is bad and describe(bad) == "Duplicate Content-Length"
    chunked = TransferEncodingError("Not enough data to satisfy transfer length header.")
    try:
        raise web.RequestPayloadError("Response payload is not completed") from chunked
    except web.RequestPayloadError as err:
        assert client_fault(err) is chunked
    assert client_fault(RuntimeError("a bug")) is None and client_fault(None) is None
