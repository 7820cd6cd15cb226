"""`logging.format`: the JSON formatter writes each record as one JSON object on one line,
whatever it holds; the access log's session hash is keyed and tenant-scoped, and the access
log is in the middleware stack only when it is on."""

from __future__ import annotations

import logging
import sys

import orjson

from router.config import LoggingSettings, parse_settings
from router.http.access_log import AccessLog, json_line
from router.http.middleware import middleware_stack
from router.logs import formatter
from router.placement.session import RoutingKey


def record(message: str, *args: object, exc_info: bool = False, **extra: object):
    made = logging.LogRecord("kvrouter.test", logging.ERROR, __file__, 1, message, args,
                             sys.exc_info() if exc_info else None)  # fmt: skip
    made.__dict__.update(extra)
    return made


def test_a_json_record_with_a_traceback_and_odd_text_is_one_json_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        made = record("worker %s failed: %s", "w\udcff0", "line one\nline two",
                      exc_info=True, worker="w0", attempt=2)  # fmt: skip
    line = formatter("json").format(made)
    assert "\n" not in line
    parsed = orjson.loads(line)
    assert parsed["level"] == "ERROR" and parsed["logger"] == "kvrouter.test"
    assert parsed["message"] == "worker w\\udcff0 failed: line one\nline two"
    assert (parsed["worker"], parsed["attempt"]) == ("w0", 2)
    assert "ValueError: bad\nthing" in parsed["exc_info"] and parsed["time"]


def test_the_text_format_is_a_plain_line():
    line = formatter("text").format(record("hello %s", "there"))
    assert line.endswith("ERROR kvrouter.test: hello there")


def test_an_access_record_holding_a_lone_surrogate_is_still_one_json_line():
    from datetime import UTC, datetime

    line = json_line(datetime.now(UTC), {"request_id": "id\udcff", "status": 200})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = orjson.loads(line)
    assert parsed["request_id"] == "id\\udcff"
    assert (parsed["logger"], parsed["status"]) == ("kvrouter.access", 200)


def access(hash_key: str | None) -> AccessLog:
    return AccessLog(LoggingSettings.model_validate({"access": {"hash_key": hash_key}}))


def test_the_session_hash_is_keyed_scoped_by_tenant_and_absent_without_a_session():
    keyed, other_key, unkeyed = access("k" * 16), access("j" * 16), access(None)
    alice = RoutingKey("acme", "alice-1")
    assert keyed.session_hash(alice) == keyed.session_hash(RoutingKey("acme", "alice-1"))
    assert keyed.session_hash(alice) != other_key.session_hash(alice)
    assert keyed.session_hash(alice) != unkeyed.session_hash(alice)
    assert keyed.session_hash(alice) != keyed.session_hash(RoutingKey("other", "alice-1"))
    assert len(keyed.session_hash(alice) or "") == 16 and "alice" not in (
        keyed.session_hash(alice) or ""
    )
    assert keyed.session_hash(RoutingKey("acme", None, prefix="abc")) is None
    assert keyed.session_hash(None) is None


def test_the_access_log_is_in_the_middleware_stack_only_when_it_is_on():
    off = middleware_stack(None)
    on = middleware_stack(access("k" * 16))
    assert len(on) == len(off) + 1 and on[1:] == off
    assert on[0].__name__ == "access_log"


def test_the_hash_key_comes_from_the_environment_when_set():
    raw = {"workers": [{"url": "http://127.0.0.1:9"}], "logging": {"access": {"enabled": True}}}
    settings = parse_settings(raw, env={"KVROUTER_ACCESS_LOG_HASH_KEY": "e" * 20})
    assert settings.logging.access.hash_key == "e" * 20
    assert parse_settings(raw, env={}).logging.access.hash_key is None
