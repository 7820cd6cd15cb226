"""Placement policies behind one protocol, built by name from `routing.policy`."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from router.config import RoutingSettings
from router.fleet.load import Loads
from router.placement.cost import CostModel
from router.placement.policies.base import Decision, Policy, Rehome, Route, can_take, why_not
from router.placement.policies.bounded_load import BoundedLoad
from router.placement.policies.consistent_hash import ConsistentHash
from router.placement.policies.cost_aware import CostAware
from router.placement.policies.least_inflight import LeastInflight
from router.placement.policies.least_loaded import LeastLoaded
from router.placement.policies.random_pick import RandomPick
from router.placement.policies.round_robin import RoundRobin
from router.placement.policies.slow_start import SlowStart

__all__ = [
    "BoundedLoad",
    "ConsistentHash",
    "CostAware",
    "Decision",
    "LeastInflight",
    "LeastLoaded",
    "Policy",
    "RandomPick",
    "Rehome",
    "RoundRobin",
    "Route",
    "SlowStart",
    "build_policy",
    "can_take",
    "why_not",
]


def build_policy(
    settings: RoutingSettings,
    slow_start: SlowStart,
    loads: Loads,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Policy:
    """The policy named by `routing.policy` (validated by the config, so always known)."""
    name = settings.policy
    if name == "cost_aware":
        cost = CostModel.from_settings(settings.cost)
        return CostAware(
            slow_start, loads, cost, settings.vnodes, settings.load_factor, clock
        )
    if name == "consistent_hash":
        return ConsistentHash(slow_start, settings.vnodes, clock)
    if name == "bounded_load":
        floor = settings.saturation.floor
        return BoundedLoad(slow_start, settings.vnodes, settings.load_factor, clock, floor)
    if name == "least_loaded":
        return LeastLoaded(slow_start, loads, clock)
    if name == "least_inflight":
        return LeastInflight(slow_start)
    if name == "round_robin":
        return RoundRobin(slow_start)
    if name == "random":
        return RandomPick(slow_start, rng)
    raise ValueError(f"routing.policy: unknown policy {name!r}")
