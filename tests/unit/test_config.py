from pathlib import Path

import pytest

from router.config import dump_settings, load_settings, parse_settings
from router.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ONE_WORKER = {"workers": [{"url": "http://127.0.0.1:9000"}]}


def test_example_router_yaml_is_valid_and_complete():
    settings = load_settings(ROOT / "router.yaml", env={})
    assert [w.name for w in settings.workers] == ["sim-0", "sim-1", "sim-2", "sim-3"]
    assert settings.health.fall == 2 and settings.routing.vnodes == 160
    assert "listen: 127.0.0.1:8080" in dump_settings(settings)


def test_unknown_key_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"health\.intervall: unknown key"):
        parse_settings({**ONE_WORKER, "health": {"intervall": 1}})


def test_bad_value_names_key_and_problem():
    with pytest.raises(ConfigError, match=r"routing\.vnodes: .*greater than or equal to 1"):
        parse_settings({**ONE_WORKER, "routing": {"vnodes": 0}})


def test_worker_url_must_be_http():
    with pytest.raises(ConfigError, match=r"workers\.0\.url: .*http\(s\) URL"):
        parse_settings({"workers": [{"url": "localhost:9000"}]})


def test_no_workers_is_an_error():
    with pytest.raises(ConfigError, match="workers"):
        parse_settings({"workers": []})


def test_duplicate_worker_names_are_rejected():
    workers = [{"url": "http://a:1", "name": "x"}, {"url": "http://b:1", "name": "x"}]
    with pytest.raises(ConfigError, match="duplicate worker names"):
        parse_settings({"workers": workers})


def test_key_source_names_exactly_one_place():
    bad = {**ONE_WORKER, "session": {"sources": [{"header": "a", "cookie": "b"}]}}
    with pytest.raises(ConfigError, match="exactly one of header, cookie, body, query"):
        parse_settings(bad)


def test_listen_must_be_host_and_port():
    with pytest.raises(ConfigError, match=r"listen: .*HOST:PORT"):
        parse_settings({**ONE_WORKER, "listen": "8080"})


def test_only_5xx_statuses_can_be_retried():
    with pytest.raises(ConfigError, match=r"retries\.on_status: .*only 5xx"):
        parse_settings({**ONE_WORKER, "retries": {"on_status": [429]}})


def test_environment_overrides_listen_and_workers():
    env = {"KVROUTER_LISTEN": "0.0.0.0:9999", "KVROUTER_WORKERS": "http://a:1, http://b:2"}
    settings = parse_settings(ONE_WORKER, env=env)
    assert settings.listen == "0.0.0.0:9999"
    assert [w.url for w in settings.workers] == ["http://a:1", "http://b:2"]


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path):
    broken = tmp_path / "r.yaml"
    broken.write_text("workers: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(broken, env={})
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "missing.yaml", env={})


def test_store_history_and_auth_sections_are_validated_by_key():
    from router.config import parse_settings
    from router.errors import ConfigError

    base = {"workers": [{"url": "http://127.0.0.1:9000"}]}
    settings = parse_settings({**base, "store": {"url": "redis://127.0.0.1:6379/2"}}, env={})
    assert settings.store.history_ttl == 24 * 3600
    assert settings.history.tokenizer.kind == "bpe"
    bad = [
        ({"store": {"url": "http://x"}}, "store.url"),
        ({"history": {"tokenizer": {"kind": "huggingface"}}}, "history.tokenizer"),
        ({"history": {"tokenizer": {"encoding": "p50k"}}}, "history.tokenizer.encoding"),
        ({"auth": {"keys": [{"tenant": "a", "sha256": "plaintext"}]}}, "auth.keys.0.sha256"),
        ({"history": {"max_prompt_tokenz": 5}}, "history.max_prompt_tokenz: unknown key"),
    ]
    for extra, named in bad:
        try:
            parse_settings({**base, **extra}, env={})
        except ConfigError as err:
            assert named in str(err), (named, str(err))
        else:
            raise AssertionError(f"{extra} was accepted")


def test_engine_defaults_to_vllm_and_a_worker_can_override_it():
    raw = {"workers": [{"url": "http://a:1", "name": "a"}, {"url": "http://b:1", "engine": "tgi"}]}
    settings = parse_settings(raw, env={})
    assert settings.engine == "vllm" and settings.custom_metrics == {}
    assert [settings.engine_of(w) for w in settings.workers] == ["vllm", "tgi"]
    settings = parse_settings({**raw, "engine": "sglang"}, env={})
    assert [settings.engine_of(w) for w in settings.workers] == ["sglang", "tgi"]


def test_example_router_yaml_documents_engine_and_custom_metrics():
    text = (ROOT / "router.yaml").read_text()
    assert "\nengine: vllm\n" in text and "\ncustom_metrics: {}\n" in text
    assert "#   custom_metrics: {running:" in text


def test_unknown_engine_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"workers\.0\.engine: Input should be 'vllm'"):
        parse_settings({"workers": [{"url": "http://a:1", "engine": "ollama"}]})
    with pytest.raises(ConfigError, match=r"\n  engine: Input should be 'vllm'"):
        parse_settings({**ONE_WORKER, "engine": "ollama"})


def test_custom_engine_needs_custom_metrics_naming_running_or_waiting():
    workers = [{"url": "http://a:1", "name": "a"}, {"url": "http://b:1", "name": "b"}]
    custom_b = [workers[0], {**workers[1], "engine": "custom"}]
    with pytest.raises(ConfigError, match=r"workers\.1 \(b\): engine custom needs custom_metrics"):
        parse_settings({"workers": custom_b})
    with pytest.raises(ConfigError, match=r"error, engine: engine custom needs custom_metrics"):
        parse_settings({"workers": workers, "engine": "custom"})
    with pytest.raises(ConfigError, match="running or waiting"):
        parse_settings({"workers": custom_b, "custom_metrics": {"kv_usage": "my_kv"}})
    ok = parse_settings({"workers": custom_b, "custom_metrics": {"waiting": "my_queue"}})
    assert ok.engine_of(ok.workers[1]) == "custom" and ok.custom_metrics == {"waiting": "my_queue"}


def test_top_level_custom_engine_needs_no_metrics_when_every_worker_overrides_it():
    workers = [{"url": "http://a:1", "engine": "vllm"}]
    settings = parse_settings({"workers": workers, "engine": "custom"})
    assert settings.engine_of(settings.workers[0]) == "vllm"


def test_custom_metrics_keys_and_names_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match=r"custom_metrics\.latency\.\[key\]: Input should be"):
        parse_settings({**ONE_WORKER, "custom_metrics": {"running": "a", "latency": "b"}})
    with pytest.raises(ConfigError, match=r"custom_metrics\.running: String should match"):
        parse_settings({**ONE_WORKER, "custom_metrics": {"running": "not a metric"}})


def test_the_admin_api_listens_on_loopback_by_default_and_never_on_the_public_address():
    workers = [{"url": "http://127.0.0.1:9"}]
    assert parse_settings({"workers": workers}, env={}).admin.listen == "127.0.0.1:8081"
    same = {"workers": workers, "listen": "0.0.0.0:8080",
            "admin": {"token": "t" * 16, "listen": "0.0.0.0:8080"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"admin\.listen: 0\.0\.0\.0:8080 is also `listen`"):
        parse_settings(same, env={})
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        parse_settings({"workers": workers, "admin": {"listen": "nowhere"}}, env={})


@pytest.mark.parametrize("section", ["session", "auth"])
def test_a_tenant_name_with_a_control_character_is_rejected(section):
    """Ring keys are tenant + \\x1f + session id: tenant `a` with session `b\\x1fc` had the
    ring key of tenant `a\\x1fb` with session `c`."""
    raw = {"session": {"default_tenant": "a\x1fb"}} if section == "session" else (
        {"auth": {"keys": [{"tenant": "a\x1fb", "sha256": "0" * 64}]}}
    )  # fmt: skip
    where = "session.default_tenant" if section == "session" else "auth.keys.0.tenant"
    with pytest.raises(ConfigError, match=rf"{where}: .*cannot hold control characters"):
        parse_settings({**ONE_WORKER, **raw})
    assert parse_settings({**ONE_WORKER, "session": {"default_tenant": "acme corp"}})


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_bytes(b"listen: 127.0.0.1:8080\nworkers: [{url: 'http://h:1', name: caf\xe9}]\n")
    with pytest.raises(ConfigError, match=r"\.yaml is not UTF-8 text: .*0xe9 in position 62"):
        load_settings(path, env={})


def test_yaml_nested_past_the_parsers_recursion_is_a_config_error(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text("workers: " + "[" * 3000)
    with pytest.raises(ConfigError, match=r"invalid YAML in .*router\.yaml: nested too deeply"):
        load_settings(path, env={})


def test_an_unknown_key_that_could_be_misread_is_quoted():
    """`health.interval:` written at the top level is one unknown key, not `interval` under
    `health`; an empty key is not the top level; a line break does not split the message."""
    cases = [
        ({"health.interval": 2}, "  'health.interval': unknown key"),
        ({"": 1}, "  '': unknown key"),
        ({"health": {"a\nb": 1}}, "  health.'a\\nb': unknown key"),
        ({"health": {"intervall": 1}}, "  health.intervall: unknown key"),
    ]
    for raw, line in cases:
        with pytest.raises(ConfigError) as caught:
            parse_settings({**ONE_WORKER, **raw})
        assert str(caught.value).splitlines()[1:] == [line]


def test_admin_token_from_the_environment_fills_an_empty_admin_section():
    """`admin:` with its keys commented out is null in YAML; the token override raised a
    TypeError on it."""
    token = {"KVROUTER_ADMIN_TOKEN": "t" * 20}
    assert parse_settings({**ONE_WORKER, "admin": None}, env=token).admin.token == "t" * 20
    with pytest.raises(ConfigError, match=r"admin: Input should be a valid dictionary"):
        parse_settings({**ONE_WORKER, "admin": 5}, env=token)


def test_recall_is_off_by_default_and_needs_its_endpoint_when_on():
    assert not parse_settings(ONE_WORKER, env={}).history.recall.enabled
    with pytest.raises(ConfigError, match=r"history\.recall: .*needs url and model"):
        parse_settings({**ONE_WORKER, "history": {"recall": {"enabled": True}}}, env={})
    bad = [
        ({"url": "embed:8000"}, r"history\.recall\.url: .*http\(s\) URL"),
        ({"position": "first"}, r"history\.recall\.position"),
        ({"top_k": 0}, r"history\.recall\.top_k"),
        ({"min_similarity": 2}, r"history\.recall\.min_similarity"),
    ]
    for recall, named in bad:
        with pytest.raises(ConfigError, match=named):
            parse_settings({**ONE_WORKER, "history": {"recall": recall}}, env={})
    on = {"enabled": True, "url": "http://127.0.0.1:8000/v1/embeddings", "model": "bge"}
    recall = parse_settings({**ONE_WORKER, "history": {"recall": on}}, env={}).history.recall
    assert recall.position == "before_last" and recall.query_timeout == 0.15
