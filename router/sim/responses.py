"""Small aiohttp response helpers shared by the simulator's endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.sim.openai import error_body

_JSON = "application/json"


def json_bytes_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def json_response(payload: Any, status: int = 200) -> web.Response:
    return json_bytes_response(orjson.dumps(payload), status)


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI-shaped error; never a traceback."""
    return json_bytes_response(error_body(status, message, param), status)
