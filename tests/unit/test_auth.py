"""API keys name tenants; only digests are configured."""

from __future__ import annotations

import pytest

from router.config import AuthSettings
from router.errors import Unauthorized
from router.http.auth import Authenticator, key_digest


def authenticator() -> Authenticator:
    keys = [{"tenant": "acme", "sha256": key_digest("sk-acme")},
            {"tenant": "globex", "sha256": key_digest("sk-globex")}]  # fmt: skip
    return Authenticator(AuthSettings.model_validate({"keys": keys}))


def test_a_valid_bearer_key_names_its_tenant():
    assert authenticator().tenant_of("Bearer sk-acme") == "acme"
    assert authenticator().tenant_of("bearer sk-globex") == "globex"


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Basic sk-acme", "Bearer sk-acme2"])
def test_a_missing_or_wrong_key_is_a_401(header):
    with pytest.raises(Unauthorized) as caught:
        authenticator().tenant_of(header)
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
