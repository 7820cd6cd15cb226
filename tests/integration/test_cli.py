"""The `kvrouter` command line, run as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from router.tooling.launch import child_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def kvrouter(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=PROJECT_ROOT,
    )  # fmt: skip


def test_check_config_prints_the_effective_configuration():
    result = kvrouter("check-config", "router.yaml")
    assert result.returncode == 0
    assert "valid" in result.stdout and "consecutive_failures: 3" in result.stdout


def test_bad_config_exits_2_naming_the_key_without_a_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: [{url: 'http://127.0.0.1:1'}]\nhealth: {fall: 0, colour: blue}\n")
    for command in (["check-config", str(bad)], ["serve", "--config", str(bad)]):
        result = kvrouter(*command)
        assert result.returncode == 2
        assert "health.fall: Input should be greater than or equal to 1" in result.stderr
        assert "health.colour: unknown key" in result.stderr
        assert "Traceback" not in result.stderr


def test_demo_with_load_keeps_every_session_with_its_cache():
    result = kvrouter("demo", "--load", "--sessions", "12", "--turns", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^errors +0$", out, re.MULTILINE), out
    assert re.search(r"^follow-up turns on the previous turn's worker +100\.0%$", out, re.M), out
    assert re.search(r"^history tokens served from cache +100\.0%$", out, re.MULTILINE), out
    assert "curl -s http://127.0.0.1:" in out
