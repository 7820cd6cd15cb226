"""What a reload applies live and what waits for a restart; `check-config --against`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.cli import main
from router.config import parse_settings
from router.reload import RESTART_KEYS, changes, effective

BASE = {
    "workers": [{"url": "http://10.0.0.1:8000", "name": "a"}, {"url": "http://10.0.0.2:8000"}],
}


def settings(**sections):
    return parse_settings({**BASE, **sections}, env={})


def test_each_changed_key_is_named_with_whether_it_applies_live():
    old = settings()
    new = settings(
        listen="127.0.0.1:9999",
        routing={"policy": "bounded_load", "pins": {"ttl": 60}},
        store={"timeout": 1.0},
        limits={
            "max_body_bytes": 4096, "header_timeout": 2, "body_timeout": 5,
            "keepalive_timeout": 20, "max_client_connections": 100,
        },
        auth={"keys": []},
        drain={"idle": 30},
    )  # fmt: skip
    found = {c.key: c.live for c in changes(old, new)}
    assert found == {
        "listen": False,
        "routing.policy": True,
        "routing.pins.ttl": True,
        "store.timeout": False,
        "limits.max_body_bytes": False,
        "limits.header_timeout": True,
        "limits.body_timeout": True,
        "limits.keepalive_timeout": False,
        "limits.max_client_connections": True,
        "drain.idle": True,
    }


def test_the_worker_list_is_one_live_key_described_by_names():
    old = settings()
    new = parse_settings(
        {"workers": [{"url": "http://10.0.0.1:8000", "name": "a", "weight": 2},
                     {"url": "http://10.0.0.3:8000"}]},
        env={},
    )  # fmt: skip
    (change,) = changes(old, new)
    assert change.key == "workers" and change.live
    assert change.describe() == "workers: +10.0.0.3:8000 -10.0.0.2:8000 ~a [live]"


def test_the_applied_configuration_keeps_every_restart_key_at_its_running_value():
    old = settings(store={"timeout": 0.5}, metrics={"prefix": "kvr"})
    new = settings(
        store={"timeout": 2.0}, metrics={"prefix": "other"}, listen="127.0.0.1:1",
        proxy={"prefixes": ["/v2/"]}, routing={"policy": "round_robin"},
    )  # fmt: skip
    applied = effective(old, new)
    assert applied.store.timeout == 0.5 and applied.metrics.prefix == "kvr"
    assert applied.listen == old.listen and applied.proxy.prefixes == old.proxy.prefixes
    assert applied.routing.policy == "round_robin"
    assert [c.key for c in changes(old, applied)] == ["routing.policy"]


@pytest.mark.parametrize("key", RESTART_KEYS)
def test_every_restart_key_is_a_real_setting(key):
    tree = settings().model_dump()
    for part in key.split("."):
        assert part in tree, key
        tree = tree[part]


def test_check_config_against_lists_changes(tmp_path: Path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump(BASE))
    new.write_text(yaml.safe_dump({**BASE, "listen": "0.0.0.0:80", "retries": {"attempts": 3}}))
    assert main(["check-config", str(new), "--against", str(old)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"2 keys differ from {old}:")
    assert out[1:] == [
        "listen: '127.0.0.1:8080' -> '0.0.0.0:80' [restart]",
        "retries.attempts: 2 -> 3 [live]",
    ]
    new.write_text("routing: {policy: fastest}\n" + yaml.safe_dump(BASE))
    assert main(["check-config", str(new), "--against", str(old)]) == 2
    assert "routing.policy" in capsys.readouterr().err


TOKEN, OTHER = "a" * 24, "b" * 24


def test_the_admin_listener_is_restart_history_access_and_trusted_proxies_are_live():
    old = settings(admin={"token": TOKEN})
    new = settings(
        admin={"token": TOKEN, "listen": "127.0.0.1:9181"}, history={"access": "open"},
        proxy={"trusted_proxies": ["10.0.0.0/8"]},
    )  # fmt: skip
    found = {c.key: c.live for c in changes(old, new)}
    assert found == {
        "admin.listen": False, "history.access": True, "proxy.trusted_proxies": True,
    }  # fmt: skip
    applied = effective(old, new)
    assert applied.admin.listen == old.admin.listen and applied.history.access == "open"
    assert applied.proxy.trusted_proxies == ("10.0.0.0/8",)


def test_a_first_admin_token_waits_for_a_restart_a_changed_or_removed_one_applies_live():
    without, with_token, other = settings(), settings(admin={"token": TOKEN}), settings(
        admin={"token": OTHER}
    )
    (first,) = changes(without, with_token)
    assert first.key == "admin.token" and not first.live
    assert effective(without, with_token).admin.token is None
    assert [c.live for c in changes(with_token, other)] == [True]
    assert effective(with_token, other).admin.token == OTHER
    assert [c.live for c in changes(with_token, without)] == [True]
    assert effective(with_token, without).admin.token is None


def test_check_config_marks_the_client_limits_live_or_restart(tmp_path: Path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump(BASE))
    limits = {"header_timeout": 2, "body_timeout": 5, "keepalive_timeout": 20,
              "max_client_connections": 100}  # fmt: skip
    new.write_text(yaml.safe_dump({**BASE, "limits": limits}))
    assert main(["check-config", str(new), "--against", str(old)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "limits.header_timeout: 10.0 -> 2.0 [live]",
        "limits.body_timeout: 60.0 -> 5.0 [live]",
        "limits.keepalive_timeout: 75.0 -> 20.0 [restart]",
        "limits.max_client_connections: 8192 -> 100 [live]",
    ]
