"""deploy/docker-compose.yaml, parsed: every service the stack needs, every file it mounts,
the ports each service listens on, and the router's configuration through `check-config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from router.config import load_settings
from tests.deploy.conftest import DEPLOY, check_config, listen_port, project_version

COMPOSE = DEPLOY / "docker-compose.yaml"
SERVICES = {"redis", "worker", "router", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def mounts(name: str) -> dict[str, Path | str]:
    """A service's mounts, container path -> the file or folder on the host (a Path), or the
    named volume (a str)."""
    found: dict[str, Path | str] = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = (COMPOSE.parent / source).resolve() if source.startswith(".") else source
    return found


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def published(name: str) -> set[int]:
    """The container ports a service publishes or exposes."""
    spec = service(name)
    ports = {int(str(p).rpartition(":")[2]) for p in spec.get("ports", [])}
    return ports | {int(p) for p in spec.get("expose", [])}


def router_config_file() -> Path:
    command = service("router")["command"]
    mounted = mounts("router")[flag(command, "--config")]
    assert isinstance(mounted, Path), "the router's config is not a file from the repository"
    return mounted


def test_the_stack_has_redis_four_workers_the_router_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == SERVICES
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 4 and worker["command"][0] == "sim-worker"
    assert services["router"]["command"][0] == "serve"
    assert set(services["router"]["depends_on"]) == {"redis", "worker"}


def test_every_mounted_file_and_build_input_exists():
    document = compose()
    for name in SERVICES:
        for target, source in mounts(name).items():
            if isinstance(source, Path):
                assert source.exists(), f"{name} mounts {source} at {target}: no such file"
            else:
                assert source in document["volumes"], f"{name}: volume {source} is not declared"
        build = service(name).get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"


def test_images_are_pinned_and_the_kvrouter_image_carries_the_project_version():
    for name in SERVICES:
        image = service(name)["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: image {image} is not pinned"
    for name in ("worker", "router"):
        assert service(name)["image"] == f"kvrouter:{project_version()}"


def test_the_router_config_passes_check_config_with_the_services_environment():
    done = check_config(router_config_file(), service("router").get("environment"))
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_the_router_finds_the_workers_by_their_service_name_and_uses_redis():
    settings = load_settings(router_config_file(), env={})
    worker_port = int(flag(service("worker")["command"], "--port"))
    dns = settings.discovery.dns
    assert settings.discovery.source == "dns" and dns is not None
    assert (dns.name, dns.record, dns.port) == ("worker", "A", worker_port)
    assert worker_port in published("worker")
    store = urlsplit(settings.store.url or "")
    assert (store.hostname, store.port or 6379) == ("redis", 6379)
    assert "--port" not in service("redis")["command"], "redis listens on 6379"


def test_ports_are_the_ones_each_service_listens_on():
    router = service("router")
    settings = load_settings(router_config_file(), env={})
    command_listen = flag(router["command"], "--listen")
    assert listen_port(command_listen) == settings.port
    assert published("router") == {settings.port}
    worker = service("worker")
    health = " ".join(worker["healthcheck"]["test"])
    port = int(flag(worker["command"], "--port"))
    assert f"127.0.0.1:{port}/health'" in health, "the worker's health check asks another port"
    assert settings.health.path == "/health"


def test_the_router_stops_within_the_grace_compose_gives_it():
    grace = service("router")["stop_grace_period"]
    seconds = float(re.fullmatch(r"(\d+)s", grace).group(1))
    assert seconds > load_settings(router_config_file(), env={}).shutdown_grace


def test_prometheus_scrapes_the_router_and_the_workers_and_loads_the_alert_rules():
    prometheus = service("prometheus")
    files = mounts("prometheus")
    config_path = re.search(r"--config\.file=(\S+)", " ".join(prometheus["command"])).group(1)
    config = yaml.safe_load(Path(files[config_path]).read_text())
    (rules,) = config["rule_files"]
    assert files[rules] == (DEPLOY / "grafana" / "alerts.yaml").resolve()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    router_port = load_settings(router_config_file(), env={}).port
    assert jobs["kvrouter"]["static_configs"][0]["targets"] == [f"router:{router_port}"]
    (workers,) = jobs["workers"]["dns_sd_configs"]
    worker_port = int(flag(service("worker")["command"], "--port"))
    assert (workers["names"], workers["type"], workers["port"]) == (["worker"], "A", worker_port)
    assert 9090 in published("prometheus")


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard():
    files = mounts("grafana")
    sources_dir = Path(files["/etc/grafana/provisioning/datasources"])
    (source,) = yaml.safe_load((sources_dir / "prometheus.yaml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and url.hostname == "prometheus"
    assert url.port in published("prometheus")
    providers_dir = Path(files["/etc/grafana/provisioning/dashboards"])
    (provider,) = yaml.safe_load((providers_dir / "kvrouter.yaml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = {t: s for t, s in files.items() if t.startswith(folder + "/")}
    assert list(dashboards.values()) == [(DEPLOY / "grafana" / "kvrouter-dashboard.json").resolve()]
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards
