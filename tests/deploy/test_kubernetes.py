"""deploy/kubernetes/, parsed: every object against the Kubernetes API schema, selectors against
labels, references against the objects that exist, the router's probes, grace and config
against the code, and its Role against what discovery reads (docs/kubernetes-discovery.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from router.config import Settings, parse_settings
from tests.deploy.conftest import DEPLOY, REPO, check_config, listen_port, project_version

MANIFESTS = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests are held to
DOC = REPO / "docs" / "kubernetes-discovery.md"
WORKLOADS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


def objects() -> list[Obj]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def named(kind: str, name: str, namespace: str | None = None) -> Obj | None:
    for obj in objects():
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and (
            namespace is None or meta.get("namespace") == namespace
        ):
            return obj
    return None


def router() -> Obj:
    found = named("Deployment", "kvrouter")
    assert found is not None, "no Deployment kvrouter"
    return found


def router_container() -> Obj:
    (container,) = router()["spec"]["template"]["spec"]["containers"]
    return container


def router_config_text() -> str:
    volumes = {v["name"]: v for v in router()["spec"]["template"]["spec"]["volumes"]}
    container = router_container()
    config_path = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"]))
    config_map = named("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert config_map is not None
    return config_map["data"][config_path.removeprefix(mount["mountPath"]).lstrip("/")]


def router_settings() -> Settings:
    return parse_settings(yaml.safe_load(router_config_text()), "ConfigMap kvrouter", env={})


def pod_specs() -> Iterator[tuple[Obj, Obj]]:
    for obj in objects():
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pods_matching(namespace: str, selector: dict[str, str]) -> list[Obj]:
    return [
        workload for workload, _ in pod_specs()
        if workload["metadata"]["namespace"] == namespace
        and matches(selector, workload["spec"]["template"]["metadata"]["labels"])
    ]  # fmt: skip


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_is_valid_against_the_kubernetes_api_schema(obj: Obj):
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {err.message}")


def test_every_namespaced_object_is_in_the_namespace_the_directory_creates():
    namespaces = {o["metadata"]["name"] for o in objects() if o["kind"] == "Namespace"}
    assert len(namespaces) == 1
    for obj in objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, obj["metadata"]["name"]
    first = sorted(MANIFESTS.glob("*.yaml"))[0]
    assert [o["kind"] for o in yaml.safe_load_all(first.read_text())] == ["Namespace"], (
        "kubectl applies files in name order: the namespace must come first"
    )


def test_workload_selectors_match_their_pod_labels_and_services_select_pods():
    for workload, _ in pod_specs():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert matches(selector, workload["spec"]["template"]["metadata"]["labels"])
    for obj in objects():
        namespace = obj["metadata"].get("namespace", "")
        if obj["kind"] == "Service":
            assert pods_matching(namespace, obj["spec"]["selector"]), obj["metadata"]["name"]
            ports = {p["name"] for p in obj["spec"]["ports"]}
            for workload in pods_matching(namespace, obj["spec"]["selector"]):
                spec = workload["spec"]["template"]["spec"]
                names = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
                targets = {p["targetPort"] for p in obj["spec"]["ports"]}
                assert targets <= names, f"Service {obj['metadata']['name']}: {targets - names}"
            assert ports
        if obj["kind"] == "PodDisruptionBudget":
            selected = pods_matching(namespace, obj["spec"]["selector"]["matchLabels"])
            assert selected == [router()], "the disruption budget does not cover the router"
    spread = router()["spec"]["template"]["spec"]["topologySpreadConstraints"]
    for constraint in spread:
        assert pods_matching("kvrouter", constraint["labelSelector"]["matchLabels"]) == [router()]


def test_every_referenced_object_exists():
    for workload, spec in pod_specs():
        namespace = workload["metadata"]["namespace"]
        account = spec.get("serviceAccountName")
        if account is not None:
            assert named("ServiceAccount", account, namespace), account
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert named("ConfigMap", volume["configMap"]["name"], namespace)
            if "secret" in volume:
                assert named("Secret", volume["secret"]["secretName"], namespace)
        for container in spec["containers"]:
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if ref in source and not source[ref].get("optional"):
                        assert named(kind, source[ref]["name"], namespace), env["name"]
        if workload["kind"] == "StatefulSet":
            assert named("Service", workload["spec"]["serviceName"], namespace)
    for binding in (o for o in objects() if o["kind"] == "RoleBinding"):
        namespace = binding["metadata"]["namespace"]
        assert named(binding["roleRef"]["kind"], binding["roleRef"]["name"], namespace)
        for subject in binding["subjects"]:
            assert named(subject["kind"], subject["name"], subject["namespace"])


def test_every_container_requests_cpu_and_memory_and_uses_a_pinned_image():
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{workload['metadata']['name']}"
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]), container["image"]
            assert not container["image"].endswith(":latest")
    assert router_container()["image"] == f"kvrouter:{project_version()}"


async def test_the_router_probes_ask_its_readiness_and_liveness_endpoints(app_paths):
    container = router_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/readyz", "/healthz")
    assert {readiness["path"], liveness["path"]} <= app_paths
    assert readiness["port"] in ports and liveness["port"] in ports
    assert set(ports.values()) == {listen_port(router_settings().listen)}


def test_the_termination_grace_outlasts_the_pre_stop_pause_and_shutdown_grace():
    spec = router()["spec"]["template"]["spec"]
    command = router_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert spec["terminationGracePeriodSeconds"] > pause + router_settings().shutdown_grace


def test_the_embedded_config_passes_check_config(tmp_path: Path):
    path = tmp_path / "router.yaml"
    path.write_text(router_config_text())
    done = check_config(path)
    assert done.returncode == 0, done.stderr


def test_discovery_watches_the_workers_service_and_the_store_is_the_redis_service():
    settings = router_settings()
    kube = settings.discovery.kubernetes
    assert settings.discovery.source == "kubernetes" and kube is not None
    label, _, service_name = kube.selector.partition("=")
    assert label == "kubernetes.io/service-name"
    service = named("Service", service_name, kube.namespace)
    assert service is not None, f"discovery watches {service_name}: no such Service"
    assert kube.port_name in {p["name"] for p in service["spec"]["ports"]}
    store = urlsplit(settings.store.url or "")
    host, *rest = (store.hostname or "").split(".")
    redis = named("Service", host, rest[0] if rest else router()["metadata"]["namespace"])
    assert redis is not None, f"store.url names {store.hostname}: no such Service"
    assert store.port in {p["port"] for p in redis["spec"]["ports"]}


def doc_rules() -> list[Obj]:
    """The Role rules docs/kubernetes-discovery.md documents, pods rule last."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    role = next(d for d in yaml.safe_load_all(blocks[-1]) if d["kind"] == "Role")
    return role["rules"]


def test_the_role_grants_exactly_what_discovery_reads_with_this_config():
    kube = router_settings().discovery.kubernetes
    assert kube is not None
    endpointslices, pods = doc_rules()
    expected = [endpointslices] + ([pods] if kube.weight_annotation else [])
    (binding,) = [o for o in objects() if o["kind"] == "RoleBinding"]
    role = named("Role", binding["roleRef"]["name"], kube.namespace)
    assert role is not None, "the Role is not in the namespace discovery watches"
    assert role["rules"] == expected
    account = router()["spec"]["template"]["spec"]["serviceAccountName"]
    assert {"kind": "ServiceAccount", "name": account,
            "namespace": router()["metadata"]["namespace"]} in binding["subjects"]  # fmt: skip
