"""Load tests and routing benchmarks: run from the repository root (see docs/placement.md)."""
