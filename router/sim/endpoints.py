"""Health, models, metrics, tokenize and the `/sim/*` control endpoints."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from router.sim.appkeys import ENGINE, REGISTRY
from router.sim.engine import MAX_MODEL_LEN
from router.sim.request import InvalidRequest, decode_json, parse_tokenize
from router.sim.responses import error_response, json_response
from router.sim.tokens import tokenize


async def health(request: web.Request) -> web.Response:
    if request.app[ENGINE].faults.fail_health:
        return json_response({"status": "unhealthy"}, status=503)
    return json_response({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    model = {
        "id": engine.opts.model,
        "object": "model",
        "created": engine.started,
        "owned_by": "kvrouter-sim",
        "max_model_len": MAX_MODEL_LEN,
    }
    return json_response({"object": "list", "data": [model]})


async def metrics(request: web.Request) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encode(request.app[REGISTRY]))
    response.headers["Content-Type"] = content_type
    return response


async def tokenize_prompt(request: web.Request) -> web.Response:
    """Like vLLM's `/tokenize`: a `prompt` string or chat `messages`, rendered as this worker
    renders them for a completion."""
    echo_prefill = request.app[ENGINE].opts.echo_prefill
    try:
        text = parse_tokenize(decode_json(await request.read()), echo_prefill=echo_prefill)
    except InvalidRequest as exc:
        return error_response(400, str(exc), exc.param)
    ids = tokenize(text)
    return json_response({"count": len(ids), "tokens": ids, "max_model_len": MAX_MODEL_LEN})


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[ENGINE].stats())


async def show_faults(request: web.Request) -> web.Response:
    return json_response(request.app[ENGINE].faults.as_dict())


async def change_faults(request: web.Request) -> web.Response:
    """Applies all given settings or none; answers with the settings now in force."""
    engine = request.app[ENGINE]
    try:
        faults = engine.update_faults(decode_json(await request.read()))
    except ValueError as exc:
        return error_response(400, str(exc))
    return json_response(faults.as_dict())


async def reset_cache(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.cache.clear()
    return json_response({"status": "ok", "cache_blocks": len(engine.cache)})
