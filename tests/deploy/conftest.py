"""What the deploy tests hold the files in deploy/ against: the code's routes, its metrics, the
`kvrouter check-config` command and the project's version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from router.config import parse_settings
from router.http.app import build_app
from router.metrics import Metrics
from router.root import Router
from router.tooling.launch import child_env

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Labels Prometheus puts on every series it scrapes.
TARGET_LABELS = frozenset({"instance", "job"})


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the router exports (a counter's `_total`, a histogram's `_bucket`,
    `_sum` and `_count`), with its label names (`le` on buckets)."""
    found: dict[str, frozenset[str]] = {}
    for collector in vars(Metrics()).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            if family.type == "counter":
                found[f"{family.name}_total"] = labels
            elif family.type == "histogram":
                found[f"{family.name}_bucket"] = labels | {"le"}
                found[f"{family.name}_sum"] = found[f"{family.name}_count"] = labels
            else:
                found[family.name] = labels
    return found


@pytest.fixture
async def app_paths() -> frozenset[str]:
    """The paths the router's app serves (its own endpoints and the proxied prefixes)."""
    settings = parse_settings({"workers": [{"url": "http://127.0.0.1:9"}]}, env={})
    root = Router(settings)
    try:
        app = build_app(root)
        return frozenset(r.canonical for r in app.router.resources())
    finally:
        await root.client.close()


def check_config(path: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`kvrouter check-config PATH` as a process, with `env` added to its environment (and
    none of the caller's KVROUTER_* overrides)."""
    base = {k: v for k, v in child_env().items() if not k.startswith("KVROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", "check-config", str(path)],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def listen_port(listen: str) -> int:
    return int(listen.rpartition(":")[2])
