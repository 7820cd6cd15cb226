"""docs/kubernetes-discovery.md: its router.yaml snippet loads, and its RBAC grants exactly what
the source calls."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from router.config import parse_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "kubernetes-discovery.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_configuration_snippet_loads_as_settings():
    settings = parse_settings(yaml.safe_load(yaml_blocks()[0]), str(DOC))
    kubernetes = settings.discovery.kubernetes
    assert settings.discovery.source == "kubernetes" and kubernetes is not None
    assert kubernetes.selector == "kubernetes.io/service-name=vllm"
    assert (kubernetes.namespace, kubernetes.port_name, kubernetes.weight_annotation) == (
        "inference", "http", None,
    )  # fmt: skip


def test_the_rbac_grants_list_and_watch_on_endpointslices_and_get_on_pods():
    docs = list(yaml.safe_load_all(yaml_blocks()[-1]))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    account, role, binding = docs
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    ]  # fmt: skip
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "inference"}
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"inference"}
