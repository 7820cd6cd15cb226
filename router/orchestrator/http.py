"""HTTP side of server-kept history: the chat route that switches modes, and the sessions API.

With `history.enabled: false` the chat route is a plain proxy route and the sessions API is
off. Who may use stored history at all is `history.access` (`router.orchestrator.access`). The
chat route is added before the proxy's catch-all routes, so it wins for its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from router.errors import BadRequest, HistoryUnavailable, NotFound
from router.http.access_log import ROUTING_KEY
from router.http.auth import TENANT
from router.http.common import ROOT, json_response, read_body, request_id_of
from router.http.handlers import proxy_handler
from router.orchestrator.access import history_tenant
from router.orchestrator.history import Conversation
from router.orchestrator.recall import RECALLED, RECALLED_HEADER
from router.placement.session import (
    MAX_SESSION_ID_LENGTH,
    RequestView,
    parse_json_body,
    query_values,
)
from router.proxy.forward import Outgoing
from router.proxy.headers import upstream_headers
from router.store import StoreUnavailable
from router.store.vectors import turn_digest

CHAT_PATH = "/v1/chat/completions"
SESSIONS_PATH = "/v1/sessions/{session}"


def routes(prefixes: Sequence[str]) -> list[web.RouteDef]:
    """The sessions API, and the chat route when a proxied prefix covers it."""
    found = [web.get(SESSIONS_PATH, get_session), web.delete(SESSIONS_PATH, delete_session)]
    if any(CHAT_PATH.startswith(p.rstrip("/") + "/") for p in prefixes):
        found.append(web.post(CHAT_PATH, chat_handler))
    return found


def server_keeps_history(request: web.Request) -> bool:
    """The `history.header` (server or client) decides; else whether the route defaults to it."""
    settings = request.app[ROOT].settings.history
    value = request.headers.get(settings.header)
    if value is None:
        return settings.enabled and request.path in settings.server_routes
    mode = value.strip().lower()
    if mode not in ("server", "client"):
        raise BadRequest(f"{settings.header} must be 'server' or 'client', got {value!r}")
    if mode == "server" and not settings.enabled:
        raise BadRequest(
            f"{settings.header}: server asks for server-kept history, which is off on this "
            "router (history.enabled: false)"
        )
    return mode == "server"


def tenant_for_history(request: web.Request) -> str:
    """The tenant whose stored history this request may use (`history.access`), or the 403."""
    root = request.app[ROOT]
    history = root.settings.history
    return history_tenant(
        history.access,
        authenticated=request.get(TENANT),
        keys_configured=root.authenticator.enabled,
        claimed=root.extractor.tenant(request.headers),
        header=history.header,
    )


async def chat_handler(request: web.Request) -> web.StreamResponse:
    if not server_keeps_history(request):
        return await proxy_handler(request)
    tenant = tenant_for_history(request)
    root = request.app[ROOT]
    limits = root.settings.limits
    body = await read_body(request, limits.max_body_bytes, limits.body_timeout)
    document = parse_json_body(body)
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    request_id = request_id_of(request)
    view = RequestView(request.headers, query_values(request.rel_url.raw_query_string), body)
    key = request[ROUTING_KEY] = root.extractor.extract(view, document, tenant=tenant)
    headers = upstream_headers(
        request, request_id, trusted=root.trusted_proxies, drop_authorization=TENANT in request
    )
    out = Outgoing(request.method, request.rel_url.raw_path_qs, headers, b"", request_id, key)
    return await root.orchestrator.handle(request, out, document)


async def recalled_header(request: web.Request, response: web.StreamResponse) -> None:
    """`x-kvrouter-recalled: N` on the answer of an orchestrator turn with recall on."""
    recalled = request.get(RECALLED)
    if recalled is not None:
        response.headers[RECALLED_HEADER] = str(recalled)


def _session_of(request: web.Request) -> tuple[str, str]:
    if not request.app[ROOT].settings.history.enabled:
        raise NotFound(f"no route for {request.path} (history.enabled: false)")
    session = request.match_info["session"]
    if len(session) > MAX_SESSION_ID_LENGTH:
        raise BadRequest(f"session id is longer than {MAX_SESSION_ID_LENGTH} characters")
    return tenant_for_history(request), session


async def get_session(request: web.Request) -> web.Response:
    """The stored history of one of the caller's sessions."""
    tenant, session = _session_of(request)
    orchestrator = request.app[ROOT].orchestrator
    stored = await orchestrator.read(tenant, session)
    if not stored.entries and stored.summary is None:
        raise NotFound(f"no stored history for session {session!r}")
    try:
        embedded = await orchestrator.recall.embedded(tenant, session)
    except StoreUnavailable as err:
        raise HistoryUnavailable(str(err)) from None
    document = session_document(session, orchestrator.decode(stored), embedded)
    return json_response(document, headers={"x-request-id": request_id_of(request)})


async def delete_session(request: web.Request) -> web.Response:
    """Forget one of the caller's sessions: history, summary and pin."""
    tenant, session = _session_of(request)
    if not await request.app[ROOT].orchestrator.forget(tenant, session):
        raise NotFound(f"no stored history for session {session!r}")
    body = {"id": session, "object": "session.deleted", "deleted": True}
    return json_response(body, headers={"x-request-id": request_id_of(request)})


def session_document(
    session: str, conversation: Conversation, embedded: set[bytes] | None = None
) -> dict[str, Any]:
    """The sessions API's answer; with recall on (`embedded`: the digests of the turns that
    have an embedding) each turn says whether it has one."""
    turns = sorted((*conversation.folded, *conversation.turns), key=lambda t: t.entries[0].index)
    system = [e.message for e in conversation.system]
    summary = conversation.summary
    described = [
        {"id": t.id, "complete": t.complete, "tokens": t.tokens, "messages": t.messages}
        for t in turns
    ]
    if embedded is not None:
        for turn, document in zip(turns, described, strict=True):
            document["embedded"] = turn_digest(turn.key) in embedded
    return {
        "id": session,
        "object": "session",
        "messages": [*system, *(m for t in turns for m in t.messages)],
        "turns": described,
        "system": system,
        "summary": None if summary is None else {
            "text": summary.text, "tokens": summary.tokens, "through_message": summary.through,
        },
        "first_message": conversation.first_index,
        "tokens": conversation.tokens,
    }  # fmt: skip
