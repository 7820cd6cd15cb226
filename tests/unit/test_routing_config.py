"""The routing section of router.yaml: policies by name, validated options, sane defaults."""

from __future__ import annotations

import pytest

from router.config import parse_settings
from router.errors import ConfigError

ONE_WORKER = {"workers": [{"url": "http://127.0.0.1:8000"}]}


@pytest.mark.parametrize(
    "policy",
    [
        "cost_aware", "consistent_hash", "bounded_load", "least_loaded", "least_inflight",
        "round_robin", "random",
    ],
)
def test_every_policy_is_chosen_by_name(policy):
    assert parse_settings({**ONE_WORKER, "routing": {"policy": policy}}).routing.policy == policy


def test_defaults_are_cost_aware_with_pins_kept_until_idle():
    routing = parse_settings(ONE_WORKER).routing
    assert (routing.policy, routing.load_factor) == ("cost_aware", 1.25)
    assert routing.saturation.floor == 32 and routing.saturation.hold == 0.5
    assert routing.pins.enabled and routing.pins.return_home == "on_expiry"
    assert routing.prefix.enabled and routing.degraded.action == "spread"


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"policy": "least_connections"}, r"routing\.policy: Input should be"),
        ({"load_factor": 0.9}, r"routing\.load_factor: .*greater than or equal to 1"),
        ({"pins": {"return_home": "never"}}, r"routing\.pins\.return_home"),
        ({"slow_start": {"window": -1}}, r"routing\.slow_start\.window"),
        ({"degraded": {"action": "panic"}}, r"routing\.degraded\.action"),
        ({"prefix": {"chars": 10}}, r"routing\.prefix\.chars: unknown key"),
    ],
)
def test_bad_routing_options_are_named_in_the_error(routing, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings({**ONE_WORKER, "routing": routing})
