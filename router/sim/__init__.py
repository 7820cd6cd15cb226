"""Simulated OpenAI-compatible inference worker with a prefix KV cache and a timing model,
used by the demo, the tests and the benchmarks in place of real inference pods."""
