"""Who may use server-kept history: `history.access` in `router.yaml`.

Stored history is read (`GET /v1/sessions/{id}`), deleted (`DELETE`) and extended and replayed
into prompts (orchestrator requests) by whoever names its tenant and session id. Session ids
are often guessable, so this is never open by accident:

- `off`: nobody; every such request is a 403 naming the setting.
- `keys` (the default): only requests authenticated by `auth.keys`, whose tenant comes from the
  key and never from a header. Without any configured key nobody qualifies, which makes `keys`
  the same as `off` until keys are added (the 403 says so).
- `open`: anyone; the tenant is what the client claims in `session.tenant_header`, or the
  default tenant. Only for a trusted network: the router logs a warning when it runs so.

Whatever the setting, once `auth.keys` are configured the tenant is the key's: a tenant header
never replaces it.
"""

from __future__ import annotations

from router.config import HistoryAccess
from router.errors import HistoryAccessDenied, Unauthorized

OPEN_WARNING = (
    "history.access is open: any client that can reach this router can read, delete and "
    "extend any stored conversation whose session id it knows or guesses%s; use it only on a "
    "trusted network, or configure auth.keys and history.access: keys"
)


def open_warning(tenant_header: str | None) -> str:
    """The start-up warning for `history.access: open`."""
    claim = f", and claim any tenant with the {tenant_header} header" if tenant_header else ""
    return OPEN_WARNING % claim


def history_tenant(
    access: HistoryAccess,
    *,
    authenticated: str | None,
    keys_configured: bool,
    claimed: str,
    header: str,
) -> str:
    """The tenant whose stored history this request may use, or the refusal.

    `authenticated` is the tenant of the request's API key (None without one); `claimed` is
    the tenant from the tenant header or the default; `header` the history header's name, for
    the messages."""
    if access == "off":
        raise HistoryAccessDenied(
            "server-kept history is off on this router (history.access: off): the sessions "
            f"API and '{header}: server' are refused"
        )
    if authenticated is not None:
        return authenticated
    if keys_configured:  # every /v1 request carries a key then; never fall back to a header
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if access == "open":
        return claimed
    raise HistoryAccessDenied(
        "server-kept history needs an API key (history.access: keys) and this router has no "
        "auth.keys: configure auth.keys, or set history.access: open on a trusted network"
    )
