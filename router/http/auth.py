"""API keys to tenants: `Authorization: Bearer <key>` names the tenant when `auth.keys` is set.

Keys are configured as SHA-256 digests, never in plaintext; the presented key is hashed and
compared with every configured digest in constant time. Without keys, the tenant comes from
`session.tenant_header` or is `session.default_tenant`.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from router.config import AuthSettings
from router.errors import Unauthorized

TENANT = web.RequestKey("tenant", str)


def key_digest(key: str) -> str:
    """What goes in `auth.keys[].sha256` for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = tuple((bytes.fromhex(k.sha256), k.tenant) for k in settings.keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant_of(self, authorization: str | None) -> str:
        """The tenant whose key is presented, or Unauthorized."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        # a header byte that is not UTF-8 arrives surrogate-escaped: hash the bytes as sent
        digest = hashlib.sha256(key.strip().encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for expected, tenant in self._keys:
            if hmac.compare_digest(digest, expected):
                found = tenant
        if found is None:
            raise Unauthorized("invalid API key")
        return found
