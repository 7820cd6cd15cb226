"""Tooling around the router: a local fleet of simulated workers, the demo and the benchmarks.

Nothing here is on the request path; `kvrouter serve` never imports it.
"""
