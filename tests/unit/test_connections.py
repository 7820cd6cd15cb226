"""The connection cap against the file-descriptor limit (in a child process: it changes the
process's own limit)."""

from __future__ import annotations

import subprocess
import sys

from router.tooling.launch import child_env

PROBE = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
from router.http.connections import fd_budget
print("cap", fd_budget({cap}), "soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def budget(cap: int, soft: int, hard: int) -> list[str]:
    code = PROBE.format(cap=cap, soft=soft, hard=hard)
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_the_soft_limit_is_raised_to_fit_the_cap_when_the_hard_one_allows():
    assert budget(1000, soft=1024, hard=4096) == ["cap 1000 soft 2512"]


def test_the_cap_is_lowered_to_fit_the_hard_limit_and_said():
    *warning, result = budget(8192, soft=1024, hard=1024)
    assert result == "cap 256 soft 1024"
    assert "max_client_connections 8192" in warning[0] and "256" in warning[0]


def test_no_cap_leaves_the_limit_alone():
    assert budget(0, soft=1024, hard=4096) == ["cap 0 soft 1024"]
