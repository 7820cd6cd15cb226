"""Typed keys for the per-app state of a simulated worker."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from router.sim.engine import SimEngine

ENGINE = web.AppKey("kvrouter_sim_engine", SimEngine)
REGISTRY = web.AppKey("kvrouter_sim_registry", CollectorRegistry)
