"""`kvrouter bench` and the micro-benchmarks, with the helper programs they run.

Each helper is a module run as its own process (`python -m router.tooling.bench.<name>`), so the
benchmarks work from an installed wheel as well as from a checkout.
"""
