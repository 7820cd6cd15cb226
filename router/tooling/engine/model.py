"""A tiny llama model with random weights, written with the `gguf` package; nothing downloaded.

    python -m router.tooling.engine.model                      # the default model, cached
    python -m router.tooling.engine.model --layers 8 --width 512 --out /tmp/m.gguf

The vocabulary (tokens, merges, special ids) is copied from one of the vocabulary-only GGUF
files the llama.cpp sources ship (`models/ggml-vocab-<name>.gguf`, kept beside the cached
`llama-server`), and a named chat template is written into `tokenizer.chat_template`. The
weights are fp16 noise from a pinned seed, so the same options give the same file: what the
model says is noise, but the server tokenizes, renders its template, prefills and caches
exactly as it would for a trained model of the same shape. The default (4 layers, 256 wide,
GPT-2 vocabulary) is about 60 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from router.tooling.engine.build import EngineBuild, cache_root, require

TEMPLATES = {
    # ChatML, as Qwen and many others use it; every role renders the same way.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Zephyr's: role tags on lines of their own, `</s>` after each message.
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
}
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
)  # fmt: skip
HEAD_SIZE = 64


@dataclass(frozen=True, slots=True)
class TinyModel:
    """The shape of the model; `ffn` 0 means three times `width`."""

    layers: int = 4
    width: int = 256
    context: int = 8192
    vocabulary: str = "gpt-2"
    template: str = "chatml"
    seed: int = 0
    ffn: int = 0

    def __post_init__(self) -> None:
        if self.layers < 1 or self.context < 64:
            raise ValueError("a model needs at least 1 layer and a context of 64 tokens")
        if self.width < HEAD_SIZE or self.width % HEAD_SIZE:
            raise ValueError(f"width must be a multiple of {HEAD_SIZE}, got {self.width}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown chat template {self.template!r}; known: {list(TEMPLATES)}")

    @property
    def feed_forward(self) -> int:
        return self.ffn or 3 * self.width

    @property
    def file_name(self) -> str:
        return (f"tiny-l{self.layers}-w{self.width}-f{self.feed_forward}-c{self.context}-"
                f"{self.vocabulary}-{self.template}-s{self.seed}.gguf")  # fmt: skip


def write(model: TinyModel, vocab_file: Path, out: Path) -> Path:
    """Write `model` to `out` (through a temporary file beside it, then renamed)."""
    import gguf
    import numpy as np

    vocab = gguf.GGUFReader(vocab_file)
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].contents())
    rng = np.random.default_rng(model.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        _header(writer, model, n_vocab)
        _tokenizer(writer, vocab, model.template)
        for name, shape in _tensor_shapes(model, n_vocab):
            if name.endswith("norm.weight"):
                writer.add_tensor(name, np.ones(shape, dtype=np.float32))
            else:
                data = rng.standard_normal(shape, dtype=np.float32) * 0.02
                writer.add_tensor(name, data.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _header(writer, model: TinyModel, n_vocab: int) -> None:
    import gguf

    writer.add_name(f"kvrouter tiny random {model.layers}x{model.width}")
    writer.add_context_length(model.context)
    writer.add_embedding_length(model.width)
    writer.add_block_count(model.layers)
    writer.add_feed_forward_length(model.feed_forward)
    writer.add_head_count(model.width // HEAD_SIZE)
    writer.add_head_count_kv(model.width // HEAD_SIZE)
    writer.add_rope_dimension_count(HEAD_SIZE)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _tokenizer(writer, vocab, template: str) -> None:
    import gguf

    for key in _TOKENIZER_KEYS:
        field = vocab.fields.get(key)
        if field is not None:
            kinds = [gguf.GGUFValueType(t) for t in field.types]
            writer.add_key_value(key, field.contents(), kinds[0], kinds[1] if kinds[1:] else None)
    writer.add_chat_template(TEMPLATES[template])


def _tensor_shapes(model: TinyModel, n_vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and numpy shapes (rows, columns) of a llama model's tensors."""
    w, f = model.width, model.feed_forward
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, w))]
    for i in range(model.layers):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (w,)),
            (f"blk.{i}.attn_q.weight", (w, w)),
            (f"blk.{i}.attn_k.weight", (w, w)),
            (f"blk.{i}.attn_v.weight", (w, w)),
            (f"blk.{i}.attn_output.weight", (w, w)),
            (f"blk.{i}.ffn_norm.weight", (w,)),
            (f"blk.{i}.ffn_gate.weight", (f, w)),
            (f"blk.{i}.ffn_up.weight", (f, w)),
            (f"blk.{i}.ffn_down.weight", (w, f)),
        ]
    return [*shapes, ("output_norm.weight", (w,)), ("output.weight", (n_vocab, w))]


def ensure(model: TinyModel = TinyModel(), engine: EngineBuild | None = None) -> Path:
    """The model's file in the cache (`<cache>/models/`), written first when absent."""
    path = cache_root() / "models" / model.file_name
    if not path.is_file():
        engine = engine or require()
        write(model, engine.vocabulary(model.vocabulary), path)
    return path


def main(argv: list[str] | None = None) -> int:
    defaults = TinyModel()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--ffn", type=int, default=0, help="feed-forward width (0: 3 x width)")
    parser.add_argument("--context", type=int, default=defaults.context)
    parser.add_argument(
        "--vocabulary",
        default=defaults.vocabulary,
        help="a vocabulary the llama.cpp sources ship (gpt-2, llama-bpe, ...)",
    )
    parser.add_argument("--template", default=defaults.template, choices=sorted(TEMPLATES))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of the cache (always written)")  # fmt: skip
    ns = parser.parse_args(argv)
    try:
        model = TinyModel(ns.layers, ns.width, ns.context, ns.vocabulary, ns.template, ns.seed,
                          ns.ffn)  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    if ns.out is None:
        path = ensure(model)
    else:
        path = write(model, require().vocabulary(model.vocabulary), ns.out)
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB): {asdict(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
