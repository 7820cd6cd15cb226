"""`proxy.trusted_proxies`: which peers' forwarding headers are believed."""

from __future__ import annotations

import pytest

from router.config import parse_settings
from router.errors import ConfigError
from router.proxy.headers import TrustedProxies

ONE_WORKER = {"workers": [{"url": "http://127.0.0.1:9000"}]}


def test_nobody_is_trusted_by_default():
    assert parse_settings(ONE_WORKER, env={}).proxy.trusted_proxies == ()
    assert not TrustedProxies().trusts("127.0.0.1")


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("::ffff:10.9.9.9", True),  # an IPv4 peer on a dual-stack socket
        ("fd00::1", True),
        ("fe80::1%eth0", False),
        ("11.0.0.1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_a_peer_is_trusted_when_a_listed_network_holds_it(peer, trusted):
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.7", "fd00::/8"])
    assert proxies.trusts(peer) is trusted


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "proxy.internal", "10.0.0.0/33"])
def test_a_bad_network_is_rejected_naming_the_key(entry):
    with pytest.raises(ConfigError, match=r"proxy\.trusted_proxies"):
        parse_settings({**ONE_WORKER, "proxy": {"trusted_proxies": [entry]}}, env={})
