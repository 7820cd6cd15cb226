"""EndpointSlices to endpoints: conditions, names, ports, duplicates, weights (no I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.config import KubernetesDiscoverySettings
from router.fleet.discovery.slices import (
    Endpoint,
    PodRef,
    SliceError,
    endpoint_state,
    endpoints,
    parse_weight,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def settings(**extra: Any) -> KubernetesDiscoverySettings:
    return KubernetesDiscoverySettings(selector="kubernetes.io/service-name=vllm", **extra)


ABC = "endpointslice-vllm-abc12.json"
DEF = "endpointslice-vllm-def34.json"


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        (None, True),  # no conditions at all: ready is nil, which means true
        ({}, True),
        ({"ready": True, "serving": True, "terminating": False}, True),
        ({"ready": False, "serving": True, "terminating": True}, False),  # draining
        ({"ready": False, "serving": False, "terminating": True}, None),
        ({"ready": False, "terminating": True}, None),  # serving nil: ready's value, false
        ({"ready": False, "serving": True}, None),  # terminating nil: not terminating
        ({"ready": False}, None),
    ],
)
def test_conditions_follow_the_api_reference(conditions, state):
    assert endpoint_state(conditions) is state


def test_a_slice_gives_ready_pods_by_name_draining_ones_and_leaves_the_rest_out():
    found = endpoints([fixture(ABC)], settings())
    assert found == [
        Endpoint("127.0.1.20:8000", "http://127.0.1.20:8000", True, None),
        Endpoint(
            "vllm-0",
            "http://127.0.1.10:8000",
            True,
            PodRef("vllm-0", "a0000000-0000-4000-8000-000000000000"),
        ),
        Endpoint(
            "vllm-1",
            "http://127.0.1.11:8000",
            True,
            PodRef("vllm-1", "a1111111-1111-4111-8111-111111111111"),
        ),
        Endpoint(
            "vllm-2",
            "http://127.0.1.12:8000",
            False,
            PodRef("vllm-2", "a2222222-2222-4222-8222-222222222222"),
        ),
    ]


@pytest.mark.parametrize("order", [(ABC, DEF), (DEF, ABC)])
def test_a_pod_in_two_slices_is_listed_once_and_ready_wins(order):
    found = {e.name: e for e in endpoints([fixture(n) for n in order], settings())}
    assert sorted(found) == ["127.0.1.20:8000", "vllm-0", "vllm-1", "vllm-2", "vllm-5"]
    assert found["vllm-2"].ready is True
    assert found["vllm-5"].url == "http://127.0.1.15:8000"


def test_dual_stack_keeps_the_ipv4_address_and_brackets_ipv6():
    ipv6 = fixture("endpointslice-vllm-ipv6.json")
    found = {e.name: e for e in endpoints([ipv6, fixture(ABC)], settings(scheme="https"))}
    assert found["vllm-0"].url == "https://127.0.1.10:8000"
    assert found["[::1]:8000"].url == "https://[::1]:8000"
    assert found["[::1]:8000"].pod is None


def test_a_placeholder_slice_with_null_endpoints_and_ports_gives_nothing():
    assert endpoints([fixture("endpointslice-placeholder.json")], settings()) == []


def test_the_port_is_chosen_by_name_then_by_setting_then_the_only_one():
    two = fixture("endpointslice-two-ports.json")
    assert endpoints([two], settings(port_name="metrics"))[0].url == "http://127.0.1.30:9090"
    assert endpoints([two], settings(port_name="http"))[0].url == "http://127.0.1.30:8000"
    assert endpoints([two], settings(port=8080))[0].url == "http://127.0.1.30:8080"
    assert endpoints([fixture(ABC)], settings(port=8080))[1].url == "http://127.0.1.10:8080"
    named = endpoints([two], settings(port_name="http", port=8080))
    assert named[0].url == "http://127.0.1.30:8000"


def test_several_ports_and_no_choice_is_an_error_naming_port_name():
    with pytest.raises(SliceError) as err:
        endpoints([fixture("endpointslice-two-ports.json")], settings())
    assert str(err.value) == (
        "EndpointSlice vllm-pp7rt has several ports (http=8000, metrics=9090): set "
        "discovery.kubernetes.port_name to pick one"
    )


def test_a_missing_named_port_or_no_port_at_all_is_an_error():
    with pytest.raises(SliceError, match="no port named 'grpc'"):
        endpoints([fixture(ABC)], settings(port_name="grpc"))
    portless = fixture(ABC) | {"ports": []}
    with pytest.raises(SliceError, match=r"set discovery\.kubernetes\.port$"):
        endpoints([portless], settings())
    assert endpoints([portless], settings(port=7000))[0].url == "http://127.0.1.20:7000"


@pytest.mark.parametrize(
    ("raw", "weight"),
    [
        ("2.5", 2.5),
        (" 3 ", 3.0),
        ("100", 100.0),
        ("0.01", 0.01),
        ("0", None),
        ("-1", None),
        ("100.5", None),
        ("nan", None),
        ("inf", None),
        ("heavy", None),
        ("", None),
        (None, None),
    ],
)
def test_a_weight_annotation_is_a_number_in_0_to_100(raw, weight):
    assert parse_weight(raw) == weight
