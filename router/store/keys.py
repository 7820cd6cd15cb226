"""Key names for shared stores: tenant and session escaped so no tenant can forge another's key.

Both parts are percent-encoded with no safe characters, which is injective and leaves no ':',
'{' or '}' in them; the braces make every key of one session share a Redis Cluster hash slot.
"""

from __future__ import annotations

from urllib.parse import quote


def session_base(prefix: str, tenant: str, session: str) -> str:
    return f"{prefix}:{{{quote(tenant, safe='')}:{quote(session, safe='')}}}"


def session_keys(prefix: str, tenant: str, session: str) -> dict[str, str]:
    """The keys of one session: history list, appended-op ids, meta hash, pin."""
    base = session_base(prefix, tenant, session)
    return {part: f"{base}:{part}" for part in ("h", "ids", "meta", "pin")}
