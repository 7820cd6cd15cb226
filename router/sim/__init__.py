"""Simulated OpenAI-compatible inference worker with a prefix KV cache and a timing model,
used by the demo, the tests and the benchmarks in place of real inference pods."""

from router.sim.app import build_sim_app
from router.sim.cli import add_sim_arguments, run_sim_worker, sim_options_from_args
from router.sim.options import SimOptions

__all__ = [
    "SimOptions",
    "add_sim_arguments",
    "build_sim_app",
    "run_sim_worker",
    "sim_options_from_args",
]
