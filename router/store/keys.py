"""Key names and the trim policy for shared stores.

Tenant and session are escaped so no tenant can forge another's key.

Both parts are percent-encoded with no safe characters, which is injective and leaves no ':',
'{' or '}' in them; the braces make every key of one session share a Redis Cluster hash slot.
"""

from __future__ import annotations

from urllib.parse import quote


def session_base(prefix: str, tenant: str, session: str) -> str:
    return f"{prefix}:{{{quote(tenant, safe='')}:{quote(session, safe='')}}}"


def session_keys(prefix: str, tenant: str, session: str) -> dict[str, str]:
    """The keys of one session: history, applied op ids, meta hash, entry lengths, pin, the
    worker that served its last turn (`srv`), and the turn embeddings (`vec`)."""
    base = session_base(prefix, tenant, session)
    parts = ("h", "ids", "meta", "lens", "pin", "srv", "vec")
    return {part: f"{base}:{part}" for part in parts}


def tenant_key(prefix: str, tenant: str, part: str) -> str:
    """A key of the tenant's own (its rate buckets): `<prefix>:{<tenant>}:<part>`, apart from
    every session key, whose braces hold a ':' after the tenant."""
    return f"{prefix}:{{{quote(tenant, safe='')}}}:{part}"


def trim_slack(cap: int) -> int:
    """How far past the cap a history may grow before it is trimmed back to the cap, so the
    copy a trim costs is paid once per cap/8 appends, not on every one."""
    return cap // 8
