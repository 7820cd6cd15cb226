"""`history.access`: who may use stored history, and as which tenant."""

from __future__ import annotations

import pytest

from router.config import parse_settings
from router.errors import HistoryAccessDenied, Unauthorized
from router.http.auth import key_digest
from router.orchestrator.access import history_tenant
from router.root import key_extractor


def tenant(access, authenticated=None, keys_configured=False, claimed="claimed"):
    return history_tenant(
        access, authenticated=authenticated, keys_configured=keys_configured, claimed=claimed,
        header="x-kvrouter-history",
    )  # fmt: skip


def test_the_default_is_keys():
    settings = parse_settings({"workers": [{"url": "http://127.0.0.1:9"}]}, env={})
    assert settings.history.access == "keys"


@pytest.mark.parametrize("authenticated", [None, "acme"])
def test_off_refuses_everyone_naming_the_setting(authenticated):
    with pytest.raises(HistoryAccessDenied) as caught:
        tenant("off", authenticated, keys_configured=authenticated is not None)
    assert caught.value.status == 403 and "history.access: off" in caught.value.message


def test_keys_takes_the_tenant_of_the_key_and_refuses_without_one():
    assert tenant("keys", "acme", keys_configured=True) == "acme"
    with pytest.raises(HistoryAccessDenied) as caught:
        tenant("keys")
    assert "history.access: keys" in caught.value.message and "auth.keys" in caught.value.message


def test_open_takes_the_claimed_tenant_only_without_keys():
    assert tenant("open") == "claimed"
    assert tenant("open", "acme", keys_configured=True) == "acme"


@pytest.mark.parametrize("access", ["open", "keys"])
def test_with_keys_configured_a_request_without_one_never_falls_back_to_a_header(access):
    with pytest.raises(Unauthorized):
        tenant(access, None, keys_configured=True)


def test_with_api_keys_the_extractor_never_reads_the_tenant_header():
    raw = {"workers": [{"url": "http://127.0.0.1:9"}], "session": {"tenant_header": "x-t"}}
    assert key_extractor(parse_settings(raw, env={})).tenant({"x-t": "acme"}) == "acme"
    keys = {"keys": [{"tenant": "globex", "sha256": key_digest("sk-globex")}]}
    with_keys = parse_settings({**raw, "auth": keys}, env={})
    assert key_extractor(with_keys).tenant({"x-t": "acme"}) == "default"
