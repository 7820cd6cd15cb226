"""Configuration loading under arbitrary files: any `router.yaml` either loads or is refused
with a `ConfigError` whose message names the offending key; nothing else escapes. Whatever
loads dumps back to YAML that loads into equal settings.

Documents come in three kinds: the shipped `router.yaml` mutated (a key dropped, a value of
another type, an unknown key, a number out of range), random nested mappings whose keys are
mostly the settings' own names (so validation goes deep), and raw text or bytes (YAML that
does not parse, files that are not UTF-8, nesting deeper than a parser recurses).
"""

from __future__ import annotations

import io
import math
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, get_args, get_origin
from unittest.mock import patch

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from router import cli
from router.config import Settings, dump_settings, load_settings, parse_settings
from router.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TEXT = (ROOT / "router.yaml").read_text()
SHIPPED = yaml.safe_load(SHIPPED_TEXT)

Path_ = tuple[str | int, ...]


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every key name the settings accept, at any depth."""
    seen = seen if seen is not None else set()
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, field in model.model_fields.items():
        names.add(name)
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= _field_names(annotation, seen)
            stack.extend(get_args(annotation))
            if get_origin(annotation) is not None:
                stack.append(get_origin(annotation))
    return names


FIELD_NAMES = sorted(_field_names(Settings))


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The settings models an annotation holds, not looking inside them."""
    found, stack = [], [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            found.append(current)
        else:
            stack.extend(get_args(current))
    return found


def _accepted_at(path: Path_) -> set[str]:
    """The key names the settings accept in the mapping at `path` of a router.yaml."""
    annotations: list[Any] = [Settings]
    for part in path:
        inner: list[Any] = []
        for annotation in annotations:
            models = _models(annotation)
            if isinstance(part, str):
                inner += [m.model_fields[part].annotation for m in models if part in m.model_fields]
            else:  # a list's item
                inner += [a for a in get_args(annotation) if a is not Ellipsis] or models
        annotations = inner
    return {name for a in annotations for m in _models(a) for name in m.model_fields}


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key path in a parsed document (mapping keys and list indexes), deepest last."""
    found: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list
    ) else ()  # fmt: skip
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


SHIPPED_PATHS = _paths(SHIPPED)


def _get(node: Any, path: Path_) -> Any:
    for part in path:
        node = node[part]
    return node


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


FREE_MAPPINGS = {("custom_metrics",), ("limits", "tenants", "named")}  # keys are data, not settings
MAPPING_PATHS = [()] + [p for p in SHIPPED_PATHS if isinstance(_get(SHIPPED, p), dict)]
NUMBER_PATHS = [
    p for p in SHIPPED_PATHS
    if isinstance(_get(SHIPPED, p), int | float) and not isinstance(_get(SHIPPED, p), bool)
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["", "yes", "null", "1e3", "127.0.0.1:8080", "http://h:1", "/x", "custom"]),
)
key_names = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_names, inner, max_size=5),
    max_leaves=25,
)
out_of_range = st.one_of(
    st.sampled_from([0, -1, 1, 65536, 10**20, -(10**20), 0.0, -0.5, 1e308, math.inf, -math.inf]),
    st.just(math.nan),
    st.integers(),
    st.floats(),
)


@st.composite
def mutated_shipped(draw: st.DrawFn) -> tuple[dict[str, Any], str, Path_]:
    """The shipped router.yaml with one mutation: (document, what was done, where)."""
    document = _copy(SHIPPED)
    kind = draw(st.sampled_from(["drop", "retype", "unknown", "number"]))
    if kind == "unknown":
        path = draw(st.sampled_from(MAPPING_PATHS))
        existing = _get(document, path)
        name = draw(
            st.one_of(st.text(max_size=10), st.sampled_from(FIELD_NAMES)).filter(
                lambda n: n not in existing and n not in _accepted_at(path)
            )
        )
        existing[name] = draw(documents)
        return document, kind, (*path, name)
    path = draw(st.sampled_from(NUMBER_PATHS if kind == "number" else SHIPPED_PATHS))
    parent, last = _get(document, path[:-1]), path[-1]
    if kind == "drop":
        del parent[last]
    elif kind == "number":
        parent[last] = draw(out_of_range)
    else:
        old = parent[last]
        parent[last] = draw(documents.filter(lambda new: type(new) is not type(old)))
    return document, kind, path


def _error_lines(message: str) -> list[tuple[str, str]]:
    """(where, problem) for each line under `invalid configuration in ...:`."""
    head, *lines = message.splitlines()
    assert head.startswith("invalid configuration in "), message
    found = []
    for line in lines:
        assert line.startswith("  "), message
        where, _, problem = line.strip().partition(": ")
        found.append((where, problem))
    return found


def _shown(path: Path_) -> str:
    """A key path as messages show it: plain keys as they are, a key that could be misread
    (empty, dotted, with a colon, a line break or blanks around it) quoted."""
    return ".".join(
        repr(p)
        if isinstance(p, str)
        and (not p or not p.isprintable() or "." in p or ":" in p or p != p.strip())
        else str(p)
        for p in path
    )


def _names(message: str, path: Path_) -> bool:
    """Whether one of the message's lines is about `path`: at it, inside it, or at a section
    that holds it with the key named in the text (rules across keys report at the section,
    or at the top level)."""
    dotted = _shown(path)
    for where, problem in _error_lines(message):
        if where == dotted or where.startswith(dotted + "."):
            return True
        holder = "" if where == "(top level)" else where + "."
        if (dotted + ".").startswith(holder) and str(path[-1]) in problem:
            return True
    return False


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "router.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _load(path: Path, env: dict[str, str] | None = None) -> Settings | ConfigError:
    try:
        return load_settings(path, env=env or {})
    except ConfigError as err:
        return err


def _round_trips(settings: Settings) -> None:
    dumped = dump_settings(settings)
    again = parse_settings(yaml.safe_load(dumped), env={})
    assert again == settings
    assert dump_settings(again) == dumped


# -- the properties --------------------------------------------------------------------------


@given(mutated_shipped())
def test_a_mutated_router_yaml_loads_or_names_the_key(
    tmp_path_factory: pytest.TempPathFactory, mutation: tuple[dict[str, Any], str, Path_]
) -> None:
    document, kind, path = mutation
    file = _write(tmp_path_factory.getbasetemp(), yaml.safe_dump(document))
    loaded = _load(file)
    if isinstance(loaded, Settings):
        assert kind != "unknown"
        _round_trips(loaded)
        return
    message = str(loaded)
    assert str(file) in message.splitlines()[0]
    if kind == "unknown" and path[:-1] not in FREE_MAPPINGS:
        assert f"  {_shown(path)}: unknown key" in message.splitlines(), message
    else:
        assert _names(message, path), f"{kind} at {path}: {message}"


env_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["127.0.0.1:9", "http://10.0.0.1:8000,http://10.0.0.2:8000", "t" * 20]),
)
environments = st.fixed_dictionaries(
    {},
    optional={
        "KVROUTER_LISTEN": env_values,
        "KVROUTER_WORKERS": env_values,
        "KVROUTER_ADMIN_TOKEN": env_values,
    },
)


top_level = st.dictionaries(st.sampled_from(sorted(Settings.model_fields)), documents, max_size=6)


@given(documents | st.dictionaries(key_names, documents, max_size=6) | top_level, environments)
def test_any_document_loads_or_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, document: Any, env: dict[str, str]
) -> None:
    """Random nesting, with the KVROUTER_* overrides applied on top."""
    file = _write(tmp_path_factory.getbasetemp(), yaml.safe_dump(document))
    loaded = _load(file, env)
    if isinstance(loaded, Settings):
        _round_trips(loaded)
    else:
        assert _error_lines(str(loaded)) or "top level must be a mapping" in str(loaded)


raw_files = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.tuples(st.integers(0, len(SHIPPED_TEXT)), st.binary(min_size=1, max_size=4)).map(
        lambda cut: SHIPPED_TEXT.encode()[: cut[0]] + cut[1] + SHIPPED_TEXT.encode()[cut[0] :]
    ),
    st.tuples(st.sampled_from(["[", "{", "- ", "a:\n "]), st.integers(1, 1000)).map(
        lambda deep: deep[0] * deep[1]
    ),
)


@given(raw_files)
def test_any_file_loads_or_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: str | bytes
) -> None:
    """Text that is not YAML, bytes that are not UTF-8, nesting past the parser's recursion."""
    file = _write(tmp_path_factory.getbasetemp(), raw)
    loaded = _load(file)
    if isinstance(loaded, Settings):
        _round_trips(loaded)
    else:
        assert str(file) in str(loaded)  # every refusal names the file


@settings(max_examples=40)  # each runs the whole command: parse, validate, dump
@given(raw_files | mutated_shipped().map(lambda m: yaml.safe_dump(m[0])))
def test_check_config_exits_0_or_2_with_the_error_alone(
    tmp_path_factory: pytest.TempPathFactory, raw: str | bytes
) -> None:
    """What an operator sees: `kvrouter check-config` exits 0, or 2 with `kvrouter: ` and the
    ConfigError's message on stderr, never a traceback."""
    file = _write(tmp_path_factory.getbasetemp(), raw)
    loaded = _load(file)
    out, err = io.StringIO(), io.StringIO()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KVROUTER_")}
    with patch.dict(os.environ, clean, clear=True), redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["check-config", str(file)])
    if isinstance(loaded, Settings):
        assert code == 0 and err.getvalue() == ""
    else:
        assert code == 2 and err.getvalue() == f"kvrouter: {loaded}\n"
