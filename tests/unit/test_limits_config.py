"""The `limits.tenants` and `limits.admission` sections: defaults, validation, who is limited."""

from __future__ import annotations

import pytest

from router.config import parse_settings
from router.errors import ConfigError

ONE_WORKER = {"workers": [{"url": "http://127.0.0.1:9000"}]}


def limits(**sections: object):
    return parse_settings({**ONE_WORKER, "limits": sections}).limits


def test_rate_limits_are_off_by_default_and_keep_no_state():
    found = limits()
    assert not found.tenants.enabled and not found.keeps_state()
    assert found.tenants.of("anyone").share == 1.0
    assert found.header_timeout == 10.0, "the client limits beside them are unchanged"


def test_a_limit_on_the_default_or_on_one_named_tenant_turns_them_on():
    assert limits(tenants={"default": {"requests_per_minute": 60}}).keeps_state()
    named = limits(tenants={"named": {"acme": {"tokens_per_minute": 1000}}})
    assert named.keeps_state()
    assert named.tenants.of("acme").tokens_per_minute == 1000
    assert not named.tenants.of("other").limited
    shares_only = limits(tenants={"named": {"acme": {"share": 3}}})
    assert not shares_only.keeps_state(), "a share alone counts nothing"


def test_metric_labels_never_name_a_tenant_unless_configured():
    tenants = limits(tenants={"named": {"acme": {}, "big": {"label": "gold"}}}).tenants
    assert tenants.label_of("acme") == "named"
    assert tenants.label_of("big") == "gold"
    assert tenants.label_of("someone-else") == "other"


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"tenants": {"default": {"requests_per_minute": -1}}},
         r"limits\.tenants\.default\.requests_per_minute: .*greater than or equal to 0"),
        ({"tenants": {"named": {"acme": {"share": 0}}}},
         r"limits\.tenants\.named\.acme\.share: .*greater than 0"),
        ({"tenants": {"named": {"acme": {"label": "a b"}}}},
         r"limits\.tenants\.named\.acme\.label: .*pattern"),
        ({"tenants": {"named": {"a\x01": {}}}}, r"control characters"),
        ({"tenants": {"default": {"rpm": 5}}}, r"limits\.tenants\.default\.rpm: unknown key"),
        ({"admission": {"max_queue": 0}}, r"limits\.admission\.max_queue: .*greater than or"),
        ({"admission": {"timeout": 0}}, r"limits\.admission\.timeout: .*greater than 0"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(section, where):
    with pytest.raises(ConfigError, match=where):
        parse_settings({**ONE_WORKER, "limits": section})
