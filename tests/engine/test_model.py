"""The tiny model script: a pinned seed gives the same file, the named chat template is the one
llama-server renders, and the shape asked for is the shape served."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from router.tooling.engine.build import require
from router.tooling.engine.model import TinyModel, write
from router.tooling.fleet import LlamaServer, LlamaSettings
from router.tooling.launch import free_port

SMALL = TinyModel(layers=1, width=64, context=512, template="zephyr", seed=7)


def _post(url: str, document: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.load(resp))


def test_the_same_options_write_the_same_model_and_the_server_renders_its_template(
    tmp_path: Path,
) -> None:
    engine = require()
    first = write(SMALL, engine.vocabulary(SMALL.vocabulary), tmp_path / "a.gguf")
    second = write(SMALL, engine.vocabulary(SMALL.vocabulary), tmp_path / "b.gguf")
    assert first.read_bytes() == second.read_bytes()

    settings = LlamaSettings(slots=1, context=512, cache_ram_mib=0, model=SMALL)
    server = LlamaServer("tiny", free_port(), engine.server, first, settings)
    server.start()
    try:
        rendered = _post(server.url + "/apply-template",
                         {"messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as resp:
            meta = json.load(resp)["data"][0]["meta"]
    finally:
        server.stop()
    assert rendered["prompt"] == "<|user|>\nhi</s>\n<|assistant|>\n"
    assert (meta["n_embd"], meta["n_ctx_train"], meta["n_vocab"]) == (64, 512, 50257)
