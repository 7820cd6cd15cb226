"""The locust workload runs headless against simulated workers and a router, without failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_locustfile_runs_headless_for_a_few_seconds_without_failures(sim_fleet, router_process):
    fleet = sim_fleet(2, "--time-scale", "0.02")
    url, _ = router_process(fleet.config())
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
        "-u", "6", "-r", "6", "--run-time", "4s", "--stop-timeout", "5", "--host", url,
        "--think-min", "0.1", "--think-max", "0.3", "--max-tokens", "8",
        "--exit-code-on-error", "1", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "chat turn" in output and "time to first token" in output
    assert "served from cache" in output
