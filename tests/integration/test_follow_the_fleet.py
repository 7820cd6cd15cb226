"""A router that follows its fleet through DNS and through Kubernetes EndpointSlices: workers
join, a record that goes away drains its worker out, a terminating pod drains while its
sessions stay, and a source that stops answering leaves the last good list in service (with
/readyz saying so)."""

from __future__ import annotations

import asyncio
from typing import Any

from router.config import parse_settings
from router.http.common import ROOT
from router.server import running
from router.tooling.fleet import admin_url
from tests.conftest import FAST_HEALTH, chat_body, counted
from tests.kube_api import NAMESPACE, SELECTOR, FakeApiServer, kubeconfig

SRV = "_http._tcp.vllm.test"
TOKEN = "f" * 24
AUTH = {"authorization": f"Bearer {TOKEN}"}


def srv_zone(ports: list[int]) -> str:
    return "".join(f"{SRV}. 5 IN SRV 0 100 {port} 127.0.0.1.\n" for port in ports)


async def listed(http: Any, admin: str) -> dict[str, dict[str, Any]]:
    async with http.get(admin + "/admin/workers", headers=AUTH) as resp:
        return {w["name"]: w for w in (await resp.json())["workers"]}


async def until(check: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_dns_discovery_follows_workers_in_and_out_and_keeps_the_last_list_on_failure(
    sim_fleet, http, dns_server
):
    fleet = sim_fleet(3, "--time-scale", "0")
    ports = [int(u.rpartition(":")[2]) for u in fleet.urls]
    zone, _, nameserver = dns_server(srv_zone(ports[:2]))
    raw = fleet.config(
        admin={"token": TOKEN},
        health=FAST_HEALTH,
        routing={"slow_start": {"window": 0}},
        drain={"idle": 0.5, "check_interval": 0.05},
        discovery={
            "source": "dns",
            "dns": {"name": SRV, "record": "SRV", "interval": 0.1, "timeout": 0.3,
                    "nameservers": [nameserver]},
        },
    )  # fmt: skip
    del raw["workers"]
    settings = parse_settings(raw, env={})
    names = [f"127.0.0.1:{p}" for p in ports]
    async with running(settings, settings.host, settings.port) as runner:
        root, url = runner.app[ROOT], f"http://{settings.listen}"
        admin = admin_url(settings)

        async def two_listed() -> bool:
            return sorted(await listed(http, admin)) == sorted(names[:2])

        await until(two_listed)
        seen = set()
        for i in range(40):
            headers = {"x-session-id": f"s{i}"}
            body = chat_body()
            async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
                seen.add(r.headers["x-kvrouter-worker"])
        assert seen == set(names[:2])
        gone = fleet.urls[0]
        assert root.upstream.idle_connections()[gone] > 0

        zone.zone = srv_zone(ports[1:])  # the first goes away, the third joins

        async def rotated() -> bool:
            return sorted(await listed(http, admin)) == sorted(names[1:])

        await until(rotated)
        assert await counted(http, url, "kvrouter_membership_changes_total", change="added") == 3
        assert await counted(http, url, "kvrouter_membership_changes_total", change="removed") == 1
        assert gone not in root.upstream.idle_connections()  # its connections were closed

        zone.silent = True  # the DNS server stops answering: the last good list stays
        await until(lambda: _discovery_failing(http, url))
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200
            ready = await resp.json()
        assert ready["discovery"]["source"] == "dns" and ready["discovery"]["ok"] is False
        assert "no answer within" in ready["discovery"]["last_error"]
        assert sorted(ready["healthy_workers"]) == sorted(names[1:])
        async with http.post(url + "/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 200
        assert await counted(http, url, "kvrouter_discovery_up", source="dns") == 0

        zone.silent = False

        async def recovered() -> bool:
            async with http.get(url + "/readyz") as resp:
                return (await resp.json())["discovery"]["ok"] is True

        await until(recovered)


async def _discovery_failing(http: Any, url: str) -> bool:
    async with http.get(url + "/readyz") as resp:
        return (await resp.json())["discovery"]["ok"] is False


def endpoint_slice(pod: str, port: int, *, ready: bool = True, terminating: bool = False):
    """One slice per worker (each simulated worker has its own port on 127.0.0.1)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"vllm-{pod}",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": "vllm"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": ready, "serving": True, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod},
            }
        ],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


async def test_kubernetes_discovery_drains_a_terminating_pod_and_survives_the_api_going_away(
    sim_fleet, http, tmp_path
):
    fleet = sim_fleet(3, "--time-scale", "0")
    ports = [int(u.rpartition(":")[2]) for u in fleet.urls]
    api = FakeApiServer()
    await api.start()
    for i in range(2):
        api.put(endpoint_slice(f"vllm-{i}", ports[i]))
    raw = fleet.config(
        admin={"token": TOKEN},
        health=FAST_HEALTH,
        routing={"slow_start": {"window": 0}},
        drain={"idle": 30, "check_interval": 0.05},
        discovery={
            "source": "kubernetes",
            "kubernetes": {"namespace": NAMESPACE, "selector": SELECTOR, "port_name": "http",
                           "kubeconfig": str(kubeconfig(tmp_path / "kubeconfig", api.url))},
        },
    )  # fmt: skip
    del raw["workers"]
    settings = parse_settings(raw, env={})
    try:
        async with running(settings, settings.host, settings.port) as runner:
            root, url = runner.app[ROOT], f"http://{settings.listen}"
            admin = admin_url(settings)

            async def pods_listed() -> bool:
                return sorted(await listed(http, admin)) == ["vllm-0", "vllm-1"]

            await until(pods_listed)
            served = {}
            for i in range(30):
                headers = {"x-session-id": f"k{i}"}
                body = chat_body()
                async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                    assert r.status == 200
                    served[f"k{i}"] = r.headers["x-kvrouter-worker"]
            assert set(served.values()) == {"vllm-0", "vllm-1"}

            # vllm-1 is terminating (still serving): it drains; its sessions stay on it.
            api.put(endpoint_slice("vllm-1", ports[1], ready=False, terminating=True))
            api.put(endpoint_slice("vllm-2", ports[2]))

            async def draining() -> bool:
                workers = await listed(http, admin)
                return "vllm-2" in workers and workers["vllm-1"]["state"] == "draining"

            await until(draining)
            assert (await listed(http, admin))["vllm-1"]["drain"]["reason"] == "terminating"
            stays = next(s for s, w in served.items() if w == "vllm-1")
            async with http.post(
                url + "/v1/chat/completions", json=chat_body(), headers={"x-session-id": stays}
            ) as r:
                assert r.headers["x-kvrouter-worker"] == "vllm-1"

            await api.stop()  # the API server goes away: the last list stays in service

            async def failing() -> bool:
                return root.membership.status.ok is False

            await until(failing)
            async with http.get(url + "/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["discovery"]["source"] == "kubernetes"
            assert sorted(await listed(http, admin)) == ["vllm-0", "vllm-1", "vllm-2"]
    finally:
        await api.stop()
