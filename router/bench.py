"""`kvrouter bench`: proxy overhead figures, printed as a table."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller runs")


def run_bench(ns: argparse.Namespace) -> int:
    raise SystemExit("kvrouter bench: not available yet")
