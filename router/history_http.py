"""HTTP side of server-kept history: the chat route that switches modes, the sessions API, auth,
and the lifecycle of the orchestrator's background work.

`install_history` is called by `build_app` before the proxy's catch-all routes are added.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from router.app import (
    BALANCER,
    CLIENT,
    EXTRACTOR,
    FORWARDER,
    METRICS,
    SETTINGS,
    STORE,
    json_response,
    proxy_handler,
    read_body,
    request_id_of,
)
from router.auth import TENANT, Authenticator, authenticate
from router.config import Settings
from router.context.history import Conversation
from router.context.summary import Summarizer
from router.context.tokenizer import make_tokenizer
from router.errors import BadRequest, NotFound
from router.orchestrator import Orchestrator
from router.persist import Persister
from router.proxy import Outgoing, upstream_headers
from router.session import MAX_SESSION_ID_LENGTH, RequestView, parse_json_body

ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
CHAT_PATH = "/v1/chat/completions"
SESSIONS_PATH = "/v1/sessions/{session}"
SHUTDOWN_WRITE_GRACE = 5.0


def install_history(app: web.Application, settings: Settings) -> None:
    if settings.auth.enabled:
        prefixes = (*settings.proxy.prefixes, "/v1/")
        app.middlewares.append(authenticate(Authenticator(settings.auth), prefixes))
    app.router.add_get(SESSIONS_PATH, get_session)
    app.router.add_delete(SESSIONS_PATH, delete_session)
    if any(CHAT_PATH.startswith(p.rstrip("/") + "/") for p in settings.proxy.prefixes):
        app.router.add_post(CHAT_PATH, chat_handler)
    app.cleanup_ctx.append(_history_lifecycle)


async def _history_lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, store, client = app[SETTINGS], app[METRICS], app[STORE], app[CLIENT]
    balancer = app[BALANCER]

    def pick():
        return balancer.choose(None).worker

    history = settings.history
    tokenizer = make_tokenizer(history.tokenizer, metrics, client, pick)
    persister = Persister(store, metrics, settings.store.write_retry_deadline)
    summarizer = Summarizer(history.summary, store, client, pick, tokenizer, metrics)
    app[ORCHESTRATOR] = Orchestrator(
        history,
        store,
        app[FORWARDER],
        tokenizer,
        persister,
        summarizer,
        metrics,
        store_wait=2 * settings.store.timeout,
    )
    try:
        yield
    finally:
        await summarizer.close()
        await persister.close(min(SHUTDOWN_WRITE_GRACE, settings.shutdown_grace))


def server_keeps_history(request: web.Request) -> bool:
    """The `history.header` (server or client) decides; else whether the route defaults to it."""
    settings = request.app[SETTINGS].history
    value = request.headers.get(settings.header)
    if value is None:
        return bool(settings.server_routes) and request.path in settings.server_routes
    mode = value.strip().lower()
    if mode not in ("server", "client"):
        raise BadRequest(f"{settings.header} must be 'server' or 'client', got {value!r}")
    return mode == "server"


async def chat_handler(request: web.Request) -> web.StreamResponse:
    if not server_keeps_history(request):
        return await proxy_handler(request)
    app = request.app
    body = await read_body(request, app[SETTINGS].limits.max_body_bytes)
    document = parse_json_body(body)
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    request_id = request_id_of(request)
    view = RequestView(request.headers, request.query, body)
    key = app[EXTRACTOR].extract(view, document, tenant=request.get(TENANT))
    headers = upstream_headers(request, request_id)
    if TENANT in request:
        headers.popall("Authorization", None)
    out = Outgoing(request.method, request.rel_url.raw_path_qs, headers, b"", request_id, key)
    return await app[ORCHESTRATOR].handle(request, out, document)


def _session_of(request: web.Request) -> tuple[str, str]:
    session = request.match_info["session"]
    if len(session) > MAX_SESSION_ID_LENGTH:
        raise BadRequest(f"session id is longer than {MAX_SESSION_ID_LENGTH} characters")
    tenant = request.get(TENANT) or request.app[EXTRACTOR].tenant(request.headers)
    return tenant, session


async def get_session(request: web.Request) -> web.Response:
    """The stored history of one of the caller's sessions."""
    tenant, session = _session_of(request)
    orchestrator = request.app[ORCHESTRATOR]
    stored = await orchestrator.read(tenant, session)
    if not stored.entries and stored.summary is None:
        raise NotFound(f"no stored history for session {session!r}")
    document = session_document(session, orchestrator.decode(stored))
    return json_response(document, headers={"x-request-id": request_id_of(request)})


async def delete_session(request: web.Request) -> web.Response:
    """Forget one of the caller's sessions: history, summary and pin."""
    tenant, session = _session_of(request)
    if not await request.app[ORCHESTRATOR].forget(tenant, session):
        raise NotFound(f"no stored history for session {session!r}")
    body = {"id": session, "object": "session.deleted", "deleted": True}
    return json_response(body, headers={"x-request-id": request_id_of(request)})


def session_document(session: str, conversation: Conversation) -> dict[str, Any]:
    turns = sorted((*conversation.folded, *conversation.turns), key=lambda t: t.entries[0].index)
    system = [e.message for e in conversation.system]
    summary = conversation.summary
    return {
        "id": session,
        "object": "session",
        "messages": [*system, *(m for t in turns for m in t.messages)],
        "turns": [
            {"id": t.id, "complete": t.complete, "tokens": t.tokens, "messages": t.messages}
            for t in turns
        ],
        "system": system,
        "summary": None if summary is None else {
            "text": summary.text, "tokens": summary.tokens, "through_message": summary.through,
        },
        "first_message": conversation.first_index,
        "tokens": conversation.tokens,
    }  # fmt: skip
