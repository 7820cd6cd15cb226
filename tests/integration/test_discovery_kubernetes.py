"""The Kubernetes discovery source against a real local HTTP server that speaks the API server's
list/watch protocol for EndpointSlices (and GET pod), reached through a kubeconfig file.

The server keeps the slices and a history of watch events by resourceVersion, so a watch from
an older version replays what it missed, as the API server does; the test drives it: changes
slices (each an event to the open watches), sends bookmarks, ends watches (their timeout),
compacts the history (410 Gone), answers errors, goes away and comes back. Every request is
recorded with its query and Authorization header.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from router.config import KubernetesDiscoverySettings
from router.errors import ConfigError
from router.fleet.discovery.base import Member
from router.fleet.discovery.kubernetes import KubernetesClientMissing, KubernetesSource
from tests.kube_api import (
    NAMESPACE,
    SELECTOR,
    TOKEN,
    WEIGHT,
    FakeApiServer,
    fixture,
    kubeconfig,
)
from tests.waiting import RecordingSink, until

pytestmark = pytest.mark.timeout(30)

@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def settings(api: FakeApiServer, tmp_path: Path) -> Callable[..., KubernetesDiscoverySettings]:
    config = kubeconfig(tmp_path / "kubeconfig", api.url)

    def make(**extra: Any) -> KubernetesDiscoverySettings:
        values: dict[str, Any] = {
            "namespace": NAMESPACE,
            "selector": SELECTOR,
            "kubeconfig": str(config),
            "timeout": 2.0,
            "watch_seconds": 30,
        }
        return KubernetesDiscoverySettings(**(values | extra))

    return make


@asynccontextmanager
async def running(settings: KubernetesDiscoverySettings) -> AsyncIterator[RecordingSink]:
    """The source running against the fake server, with a short backoff."""
    sink = RecordingSink()
    source = KubernetesSource(settings, "vllm", retry_base=0.05, retry_cap=0.2)
    task = asyncio.create_task(source.run(sink))
    try:
        yield sink
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def urls(sink: RecordingSink) -> dict[str, tuple[str, bool]]:
    return {name: (m.url, m.ready) for name, m in sink.latest.items()}


INITIAL = {
    "127.0.1.20:8000": ("http://127.0.1.20:8000", True),
    "vllm-0": ("http://127.0.1.10:8000", True),
    "vllm-1": ("http://127.0.1.11:8000", True),
    "vllm-2": ("http://127.0.1.12:8000", False),
}


async def test_the_first_list_publishes_pods_by_name_with_urls_and_engine(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    api.put(fixture("endpointslice-other-service.json"))
    api.put(fixture("endpointslice-placeholder.json"))
    async with running(settings()) as sink:
        await until(lambda: sink.published, "a publish")
        assert sink.published[0] == [
            Member("127.0.1.20:8000", "http://127.0.1.20:8000", 1.0, "vllm", True),
            Member("vllm-0", "http://127.0.1.10:8000", 1.0, "vllm", True),
            Member("vllm-1", "http://127.0.1.11:8000", 1.0, "vllm", True),
            Member("vllm-2", "http://127.0.1.12:8000", 1.0, "vllm", False),
        ]
        await until(lambda: api.watches, "a watch")
    assert api.lists == [{"labelSelector": SELECTOR}]
    assert api.watches[0] == {
        "labelSelector": SELECTOR,
        "watch": "True",
        "resourceVersion": str(api.version),
        "timeoutSeconds": "30",
        "allowWatchBookmarks": "True",
    }
    assert {auth for _, _, auth in api.requests} == {f"Bearer {TOKEN}"}
    assert sink.failures == []


async def test_the_engine_setting_wins_over_the_default(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    async with running(settings(engine="sglang", scheme="https")) as sink:
        await until(lambda: sink.published, "a publish")
    assert {m.engine for m in sink.published[0]} == {"sglang"}
    assert sink.latest["vllm-0"].url == "https://127.0.1.10:8000"


async def test_watch_events_change_the_published_list(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        assert urls(sink) == INITIAL

        api.put(fixture("endpointslice-vllm-def34.json"))  # ADDED: vllm-5, and vllm-2 ready
        await until(lambda: len(sink.published) == 2, "the ADDED publish")
        assert urls(sink) == INITIAL | {
            "vllm-2": ("http://127.0.1.12:8000", True),
            "vllm-5": ("http://127.0.1.15:8000", True),
        }

        changed = fixture("endpointslice-vllm-abc12.json")
        changed["endpoints"][0]["conditions"] = {
            "ready": False, "serving": True, "terminating": True
        }  # fmt: skip
        del changed["endpoints"][1]  # vllm-1 is gone
        api.put(changed)  # MODIFIED
        await until(lambda: len(sink.published) == 3, "the MODIFIED publish")
        assert urls(sink) == {
            "127.0.1.20:8000": ("http://127.0.1.20:8000", True),
            "vllm-0": ("http://127.0.1.10:8000", False),
            "vllm-2": ("http://127.0.1.12:8000", True),
            "vllm-5": ("http://127.0.1.15:8000", True),
        }

        api.delete("vllm-def34")  # DELETED: vllm-5 goes, vllm-2 drains again
        await until(lambda: len(sink.published) == 4, "the DELETED publish")
        assert urls(sink) == {
            "127.0.1.20:8000": ("http://127.0.1.20:8000", True),
            "vllm-0": ("http://127.0.1.10:8000", False),
            "vllm-2": ("http://127.0.1.12:8000", False),
        }
    assert len(api.lists) == 1 and len(api.watches) == 1
    assert sink.failures == []


async def test_terminating_serving_drains_and_not_serving_is_left_out(api, settings):
    item = fixture("endpointslice-vllm-abc12.json")
    api.put(item)
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        assert sink.latest["vllm-2"].ready is False  # ready false, serving, terminating
        assert "vllm-3" not in sink.latest  # terminating, no longer serving
        assert "vllm-4" not in sink.latest  # not ready and not terminating: starting up

        item["endpoints"][2]["conditions"]["serving"] = False  # vllm-2 stops serving
        item["endpoints"][4]["conditions"] = {"ready": True}  # vllm-4 is up
        api.put(item)
        await until(lambda: len(sink.published) == 2, "the MODIFIED publish")
        assert "vllm-2" not in sink.latest
        assert sink.latest["vllm-4"] == Member("vllm-4", "http://127.0.1.14:8000", 1.0, "vllm")


async def test_a_watch_that_expires_resumes_from_the_last_version_without_listing(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        listed_at = api.watches[0]["resourceVersion"]

        api.expire()  # a watch with nothing in it
        await until(lambda: len(api.watches) == 2 and api.open_watches, "a second watch")
        assert api.watches[1]["resourceVersion"] == listed_at

        after_event = api.put(fixture("endpointslice-vllm-def34.json"))
        await until(lambda: len(sink.published) == 2, "the ADDED publish")
        api.expire()
        await until(lambda: len(api.watches) == 3 and api.open_watches, "a third watch")
        assert api.watches[2]["resourceVersion"] == str(after_event)

        bookmarked = api.bookmark()
        api.expire()
        await until(lambda: len(api.watches) == 4 and api.open_watches, "a fourth watch")
        assert api.watches[3]["resourceVersion"] == str(bookmarked) != str(after_event)
    assert len(api.lists) == 1
    assert len(sink.published) == 2  # the list and the ADDED event; bookmarks publish nothing
    assert sink.failures == []


@pytest.mark.parametrize("as_answer", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_lists_again_and_the_list_is_right_afterwards(api, settings, as_answer):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    api.gone_as_answer = as_answer
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        api.put(fixture("endpointslice-vllm-def34.json"))
        await until(lambda: len(sink.published) == 2, "the ADDED publish")
        # the state moves on unseen (no event), and the history before it is compacted: the
        # open watch hears ERROR 410, or (http-410) ends and the next one is answered 410
        api.slices.pop("vllm-def34")
        api.version += 5
        api.compact()
        await until(lambda: len(api.lists) == 2, "a second list")
        await until(lambda: len(sink.published) == 3, "the list's publish")
        assert urls(sink) == INITIAL
        await until(lambda: api.open_watches, "a watch after the list")
        assert api.watches[-1]["resourceVersion"] == str(api.version)
    assert sink.failures == []


async def test_an_api_server_answering_500_is_a_failure_and_recovery_publishes(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    api.answers = [500, 500]
    async with running(settings()) as sink:
        await until(lambda: sink.published, "a publish after two failed lists")
        assert (
            sink.failures
            == [
                "list EndpointSlices in inference (kubernetes.io/service-name=vllm): "
                "HTTP 500 InternalError: etcd is down"
            ]
            * 2
        )
        assert urls(sink) == INITIAL
        await until(lambda: api.open_watches, "a watch")

        api.answers = [503]  # the next watch fails: a failure, then a new list
        api.expire()
        await until(lambda: len(sink.published) == 2, "a publish after the failed watch")
    assert sink.failures[2].startswith("watch EndpointSlices in inference")
    assert "HTTP 503" in sink.failures[2]
    assert len(api.lists) == 4 and urls(sink) == INITIAL


async def test_an_api_server_going_away_is_a_failure_and_its_return_publishes(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        await api.stop()
        await until(lambda: sink.failures, "a failure while the server is away")
        await asyncio.sleep(0.3)  # a few retries, every one refused
        assert len(sink.published) == 1
        assert all(f"127.0.0.1:{api.port}" in reason for reason in sink.failures), sink.failures

        api.put(fixture("endpointslice-vllm-def34.json"))  # changed while it was away
        await api.start()
        await until(lambda: len(sink.published) == 2, "a publish once it is back")
        assert set(sink.latest) == set(INITIAL) | {"vllm-5"}
    assert len(api.lists) == 2


async def test_the_named_port_is_used(api, settings):
    api.put(fixture("endpointslice-two-ports.json"))
    async with running(settings(port_name="metrics")) as sink:
        await until(lambda: sink.published, "a publish")
    assert sink.published[0] == [Member("vllm-6", "http://127.0.1.30:9090", 1.0, "vllm")]


async def test_several_ports_and_no_choice_is_a_failure_naming_port_name(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        api.put(fixture("endpointslice-two-ports.json"))
        await until(lambda: sink.failures, "a failure")
        assert sink.failures == [
            "EndpointSlice vllm-pp7rt has several ports (http=8000, metrics=9090): set "
            "discovery.kubernetes.port_name to pick one"
        ]
        assert len(sink.published) == 1  # the last good list stands

        api.delete("vllm-pp7rt")  # the watch goes on: the next change publishes again
        await until(lambda: len(sink.published) == 2, "a publish")
        assert urls(sink) == INITIAL


def pod(name: str, uid: str, weight: str | None) -> dict[str, Any]:
    item = fixture("pod-vllm-0.json")
    item["metadata"] |= {"name": name, "uid": uid, "annotations": {}}
    if weight is not None:
        item["metadata"]["annotations"][WEIGHT] = weight
    return item


async def test_weights_come_from_the_pod_annotation_read_once_per_pod(api, settings, caplog):
    item = fixture("endpointslice-vllm-abc12.json")
    api.put(item)
    api.pods["vllm-0"] = fixture("pod-vllm-0.json")  # annotated 2.5
    api.pods["vllm-1"] = pod("vllm-1", item["endpoints"][1]["targetRef"]["uid"], "heavy")
    api.pods["vllm-2"] = pod("vllm-2", item["endpoints"][2]["targetRef"]["uid"], None)
    async with running(settings(weight_annotation=WEIGHT)) as sink:
        await until(lambda: api.open_watches, "a watch")
        assert {n: m.weight for n, m in sink.latest.items()} == {
            "127.0.1.20:8000": 1.0,  # no pod behind it
            "vllm-0": 2.5,
            "vllm-1": 1.0,  # "heavy" is not a number
            "vllm-2": 1.0,  # no annotation
        }
        assert sorted(api.pod_reads) == ["vllm-0", "vllm-1", "vllm-2"]

        item["endpoints"][0]["nodeName"] = "node-z"  # a change that is not a new pod
        api.put(item)
        await until(lambda: len(sink.published) == 2, "the MODIFIED publish")
        assert len(api.pod_reads) == 3 and sink.latest["vllm-0"].weight == 2.5

        new_uid = "c0000000-0000-4000-8000-000000000000"  # vllm-0 replaced by a new pod
        api.pods["vllm-0"] = pod("vllm-0", new_uid, "4")
        item["endpoints"][0]["targetRef"]["uid"] = new_uid
        api.put(item)
        await until(lambda: len(sink.published) == 3, "the publish of the new pod")
        assert sink.latest["vllm-0"].weight == 4.0
        assert sorted(api.pod_reads) == ["vllm-0", "vllm-0", "vllm-1", "vllm-2"]
    source_log = "kvrouter.discovery.kubernetes"
    logged = sorted(r.getMessage() for r in caplog.records if r.name == source_log)
    assert logged == [  # once per pod; the pods are read concurrently
        "pod vllm-1: annotation kvrouter.io/weight is 'heavy', not a number in (0, 100]; "
        "weight 1.0",
        "pod vllm-2: annotation kvrouter.io/weight is absent; weight 1.0",
    ]


async def test_a_pod_that_cannot_be_read_weighs_1_and_is_not_read_at_every_change(api, settings):
    item = fixture("endpointslice-vllm-abc12.json")
    api.put(item)
    api.pods["vllm-0"] = fixture("pod-vllm-0.json")  # vllm-1 and vllm-2: 404
    async with running(settings(weight_annotation=WEIGHT)) as sink:
        await until(lambda: api.open_watches, "a watch")
        assert {n: m.weight for n, m in sink.latest.items() if n.startswith("vllm")} == {
            "vllm-0": 2.5,
            "vllm-1": 1.0,
            "vllm-2": 1.0,
        }
        item["endpoints"][0]["nodeName"] = "node-z"
        api.put(item)
        await until(lambda: len(sink.published) == 2, "the MODIFIED publish")
    assert sorted(api.pod_reads) == ["vllm-0", "vllm-1", "vllm-2"]  # retried after 30 s
    assert sink.failures == []


async def test_without_a_weight_annotation_the_pods_api_is_never_called(api, settings):
    item = fixture("endpointslice-vllm-abc12.json")
    api.put(item)
    api.pods["vllm-0"] = fixture("pod-vllm-0.json")
    async with running(settings()) as sink:
        await until(lambda: api.open_watches, "a watch")
        api.put(fixture("endpointslice-vllm-def34.json"))
        item["endpoints"][0]["targetRef"]["uid"] = "c0000000-0000-4000-8000-000000000000"
        api.put(item)
        await until(lambda: len(sink.published) == 3, "two more publishes")
    assert {m.weight for m in sink.latest.values()} == {1.0}
    assert api.pod_reads == []
    assert all("/pods/" not in path for path, _, _ in api.requests)


async def test_credentials_come_from_the_kubeconfig_file_and_are_loaded_again(
    api, settings, tmp_path
):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    path = tmp_path / "later" / "kubeconfig"
    async with running(settings(kubeconfig=str(path))) as sink:
        await until(lambda: len(sink.failures) >= 2, "failures without a kubeconfig")
        assert sink.failures[0] == f"credentials: kubeconfig {path}: no such file"
        assert api.requests == []

        path.parent.mkdir()
        kubeconfig(path, api.url, token="a-wrong-token")
        await until(lambda: any("401" in f for f in sink.failures), "a 401 failure")
        assert sink.published == []
        assert "HTTP 401 Unauthorized" in sink.failures[-1]

        kubeconfig(path, api.url)
        await until(lambda: sink.published, "a publish with the right token")
        assert urls(sink) == INITIAL
    assert api.requests[-1][2] == f"Bearer {TOKEN}"


async def test_a_list_without_answer_and_a_watch_without_end_are_failures(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    api.stall_lists = True
    async with running(settings(timeout=0.3, watch_seconds=1)) as sink:
        await until(lambda: sink.failures, "a failure of the stalled list")
        assert sink.failures[0] == (
            "list EndpointSlices in inference (kubernetes.io/service-name=vllm): "
            "timed out after 0.3s"
        )
        api.endless_watches = True
        api.stall_lists = False
        await until(lambda: sink.published and api.open_watches, "a watch")
        failed = len(sink.failures)
        # the server does not end the watch after timeoutSeconds=1: the source gives up
        # after 1 + 0.3 s of waiting, and lists again
        await until(lambda: len(sink.failures) > failed, "a failure of the endless watch")
        assert sink.failures[failed] == (
            "watch EndpointSlices in inference (kubernetes.io/service-name=vllm): "
            "not ended by the server within 1.3s"
        )
        await until(lambda: len(sink.published) == 2, "a publish after the new list")


async def test_a_410_on_the_first_watch_after_a_list_is_a_failure_with_backoff(api, settings):
    api.put(fixture("endpointslice-vllm-abc12.json"))
    api.compacted = 10**9  # every watch is too old
    async with running(settings()) as sink:
        await until(lambda: len(sink.failures) >= 2, "two failures")
    assert sink.failures[0] == (
        "watch EndpointSlices in inference (kubernetes.io/service-name=vllm): 410 Expired: "
        "too old resource version: 1001 (1500) (straight after a list)"
    )
    assert len(api.lists) == len(sink.published) <= len(sink.failures) + 1


def test_without_the_kubernetes_extra_building_the_source_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # import fails
    with pytest.raises(KubernetesClientMissing) as err:
        KubernetesSource(KubernetesDiscoverySettings(selector=SELECTOR), "vllm")
    assert str(err.value) == (
        "discovery.source kubernetes needs the kubernetes-asyncio package: "
        "pip install 'kvrouter[kubernetes]'"
    )
    assert isinstance(err.value, ConfigError)
