"""Workers from Kubernetes EndpointSlices: list them, then watch them.

The protocol is the API server's list-and-watch:
- LIST the EndpointSlices matching `selector` in `namespace` (bounded by `timeout`), keep the
  list's resourceVersion, publish.
- WATCH from that version (`timeoutSeconds=watch_seconds`, bookmarks on). ADDED, MODIFIED and
  DELETED change the slices kept by name and publish the new list; BOOKMARK only advances the
  version. When the server ends the watch (its timeout), watch again from the last version
  seen, without listing.
- 410 Gone (the version is too old; an ERROR event or the answer to the watch request) lists
  again at once. A 410 on the very first watch after a list counts as a failure.
- Any other failure (credentials, connection, a non-2xx answer, a timeout, a malformed answer)
  is reported with `sink.failed(reason)` and retried after a backoff (0.5 s doubling to 10 s,
  with jitter; back to 0.5 s after a successful list) by loading the credentials and listing
  again. The membership keeps the last good list meanwhile, and logs the failing stretch (the
  source logs only what the sink does not hear: pod weights, and unexpected errors).

Every call is bounded: the credentials and the list by `timeout`, the watch's answer head by
`timeout` and the time spent waiting for its body by `watch_seconds + timeout` (the server
ends it after `watch_seconds`).

Credentials: the `kubeconfig` file when set; else the pod's service account (in-cluster);
else the default kubeconfig (`$KUBECONFIG` or ~/.kube/config). They are loaded again at each
retry, so a rotated token is picked up after the call it failed.

Weights, only with `weight_annotation` set: each member pod is read once (GET pod, bounded by
`timeout`) and its annotation parsed as a weight in (0, 100]; the result is kept per pod name
and uid, so a pod is read again when a new pod takes its name. An absent or invalid value, or a
pod that cannot be read, gives weight 1.0 and is logged once per pod (an unreadable pod is
tried again at the next change). Without `weight_annotation` the Pods API is never called.

Answers are read as JSON, not as the client's generated models (which refuse the placeholder
slice of a Service with no pods, whose `endpoints` is null); the client library provides the
credentials, the URLs and TLS. Slices to members: `router.fleet.discovery.slices`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp

from router.config import KubernetesDiscoverySettings
from router.errors import ConfigError
from router.fleet.discovery.base import Member, Sink
from router.fleet.discovery.slices import Endpoint, Json, SliceError, endpoints, parse_weight

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api

log = logging.getLogger("kvrouter.discovery.kubernetes")

INSTALL_HINT = "pip install 'kvrouter[kubernetes]'"
MAX_EVENT_BYTES = 16 * 1024 * 1024
POD_READS_AT_ONCE = 8
POD_RETRY_SECONDS = 30.0


class KubernetesClientMissing(ConfigError):
    """`discovery.source: kubernetes` without the kubernetes extra installed."""


def _kubernetes() -> tuple[ModuleType, ModuleType]:
    """The client library's `client` and `config` modules, imported when a source is built (an
    optional extra, and a few tenths of a second to import)."""
    try:
        from kubernetes_asyncio import client, config
    except ImportError as err:
        raise KubernetesClientMissing(
            f"discovery.source kubernetes needs the kubernetes-asyncio package: {INSTALL_HINT}"
        ) from err
    return client, config


class _Gone(Exception):
    """410 Gone: the resourceVersion is no longer served; list again."""


class _Failed(Exception):
    """A call failed; the message is the one-line reason."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _status_text(status: Json) -> str:
    """A Status object's reason and message on one line."""
    parts = [str(status.get(key)) for key in ("reason", "message") if status.get(key)]
    return _one_line(": ".join(parts))


def _describe(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g}s"
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _kubeconfig_files(path: str) -> str:
    """`path` with `~` expanded; it may list several files, as $KUBECONFIG does (they are
    merged), and at least one must exist."""
    files = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
    if not any(os.path.isfile(f) for f in files):
        raise _Failed(f"credentials: kubeconfig {path}: no such file")
    return os.pathsep.join(files)


class _Backoff:
    """0.5 s doubling to a cap, ±20 % jitter; `reset` after a success."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._next = base

    def reset(self) -> None:
        self._next = self._base

    def next(self) -> float:
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)


async def _answer(resp: aiohttp.ClientResponse, what: str) -> Json:
    """The JSON body of a 2xx answer; a 410 raises `_Gone`, other statuses `_Failed` with the
    API server's Status message."""
    if 200 <= resp.status < 300:
        answer = await resp.json(content_type=None)
        if not isinstance(answer, dict):
            raise _Failed(f"{what}: the answer is not a JSON object")
        return answer
    text = await resp.text(errors="replace")
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    message = _status_text(status) if isinstance(status, dict) else _one_line(text[:300])
    if resp.status == 410:
        raise _Gone(f"{what}: 410 {message}")
    raise _Failed(_one_line(f"{what}: HTTP {resp.status} {message}"))


class _Weight(NamedTuple):
    uid: str | None
    weight: float
    retry_at: float  # infinite once read; a pod that could not be read is tried again then


class _PodWeights:
    """Weights from a pod annotation, read once per pod name and uid."""

    def __init__(self, annotation: str, namespace: str, timeout: float) -> None:
        self._annotation = annotation
        self._namespace = namespace
        self._timeout = timeout
        self._known: dict[str, _Weight] = {}
        self._logged: set[tuple[str, str | None]] = set()

    async def of(self, core: CoreV1Api, found: Sequence[Endpoint]) -> dict[str, float]:
        """Each pod's weight, by member name; members that are not pods are not listed."""
        pods = {e.pod.name: e.pod.uid for e in found if e.pod is not None}
        self._known = {name: w for name, w in self._known.items() if name in pods}
        self._logged = {key for key in self._logged if key[0] in pods}
        now = time.monotonic()
        stale = [
            (name, uid)
            for name, uid in pods.items()
            if (known := self._known.get(name)) is None
            or (uid is not None and known.uid != uid)
            or known.retry_at <= now
        ]
        if stale:
            limit = asyncio.Semaphore(POD_READS_AT_ONCE)
            await asyncio.gather(*(self._read(core, name, uid, limit) for name, uid in stale))
        return {name: self._known[name].weight for name in pods}

    def _log_once(self, name: str, uid: str | None, message: str, *args: object) -> None:
        if (name, uid) not in self._logged:
            self._logged.add((name, uid))
            log.warning(message, *args)

    async def _read(
        self, core: CoreV1Api, name: str, uid: str | None, limit: asyncio.Semaphore
    ) -> None:
        async with limit:
            try:
                async with asyncio.timeout(self._timeout):
                    resp = await core.read_namespaced_pod(
                        name, self._namespace, _preload_content=False
                    )
                    async with resp:
                        pod = await _answer(resp, f"get pod {self._namespace}/{name}")
            except (_Failed, _Gone, aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                self._log_once(
                    name, uid, "pod %s: weight 1.0 until it can be read (%s)",
                    name, _describe(err, self._timeout),
                )  # fmt: skip
                self._known[name] = _Weight(uid, 1.0, time.monotonic() + POD_RETRY_SECONDS)
                return
        metadata = pod.get("metadata") or {}
        read_uid = metadata.get("uid") or uid
        raw = (metadata.get("annotations") or {}).get(self._annotation)
        weight = parse_weight(raw)
        if weight is None:
            weight = 1.0
            self._log_once(
                name, read_uid, "pod %s: annotation %s is %s; weight 1.0", name, self._annotation,
                "absent" if raw is None else f"{raw!r}, not a number in (0, 100]",
            )  # fmt: skip
        self._known[name] = _Weight(read_uid, weight, math.inf)


class KubernetesSource:
    """Follows the EndpointSlices of one selector in one namespace (see the module's
    docstring). Built at start; `run` until cancelled."""

    kind = "kubernetes"

    def __init__(
        self,
        settings: KubernetesDiscoverySettings,
        default_engine: str,
        *,
        retry_base: float = 0.5,
        retry_cap: float = 10.0,
    ) -> None:
        self._client, self._config = _kubernetes()
        self._settings = settings
        self._engine = settings.engine or default_engine
        self._backoff = _Backoff(retry_base, retry_cap)
        self._slices: dict[str, Json] = {}
        self._weights = (
            _PodWeights(settings.weight_annotation, settings.namespace, settings.timeout)
            if settings.weight_annotation
            else None
        )
        self._progressed = False  # a watch event or a whole watch since the last list

    async def run(self, sink: Sink) -> None:
        while True:
            try:
                async with await self._connect() as api:
                    await self._follow(api, sink)
            except (_Failed, _Gone) as err:
                sink.failed(_one_line(str(err)))
            except Exception as err:  # a bug, or an answer of a shape nobody expected
                log.exception("kubernetes discovery: unexpected error")
                sink.failed(_one_line(_describe(err, self._settings.timeout)))
            await asyncio.sleep(self._backoff.next())

    async def _connect(self) -> ApiClient:
        """A client with the configured credentials (see the module's docstring)."""
        settings = self._settings
        configuration = self._client.Configuration()
        try:
            async with asyncio.timeout(settings.timeout):
                if settings.kubeconfig:
                    await self._load_kubeconfig(settings.kubeconfig, configuration)
                else:
                    try:
                        self._config.load_incluster_config(client_configuration=configuration)
                    except self._config.ConfigException as in_cluster:
                        path = os.environ.get("KUBECONFIG") or "~/.kube/config"
                        try:
                            await self._load_kubeconfig(path, configuration)
                        except _Failed as err:
                            raise _Failed(f"{err} (and in-cluster: {in_cluster})") from err
        except _Failed:
            raise
        except Exception as err:
            raise _Failed(f"credentials: {_describe(err, settings.timeout)}") from err
        return self._client.ApiClient(configuration)

    async def _load_kubeconfig(self, path: str, configuration: Any) -> None:
        files = _kubeconfig_files(path)
        try:
            await self._config.load_kube_config(
                config_file=files, client_configuration=configuration, persist_config=False
            )
        except Exception as err:
            raise _Failed(f"credentials: kubeconfig {path}: {_describe(err, 0)}") from err

    async def _follow(self, api: ApiClient, sink: Sink) -> None:
        """List, publish, then watch until a failure; a 410 lists again."""
        discovery = self._client.DiscoveryV1Api(api)
        core = self._client.CoreV1Api(api)
        while True:
            version = await self._list(discovery)
            self._backoff.reset()
            self._progressed = False
            await self._publish(sink, core)
            try:
                while True:
                    version = await self._watch(discovery, version, sink, core)
            except _Gone as gone:
                if not self._progressed:
                    raise _Failed(f"{gone} (straight after a list)") from gone
                log.debug("kubernetes discovery: %s; listing again", gone)

    def _where(self) -> str:
        return f"EndpointSlices in {self._settings.namespace} ({self._settings.selector})"

    async def _list(self, discovery: DiscoveryV1Api) -> str:
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout):
                resp = await discovery.list_namespaced_endpoint_slice(
                    settings.namespace, label_selector=settings.selector, _preload_content=False
                )
                async with resp:
                    answer = await _answer(resp, f"list {self._where()}")
        except (_Failed, _Gone):
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            raise _Failed(f"list {self._where()}: {_describe(err, settings.timeout)}") from err
        version = (answer.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise _Failed(f"list {self._where()}: the answer has no metadata.resourceVersion")
        items = answer.get("items") or []
        self._slices = {str((i.get("metadata") or {}).get("name")): i for i in items}
        return str(version)

    async def _watch(
        self, discovery: DiscoveryV1Api, version: str, sink: Sink, core: CoreV1Api
    ) -> str:
        """One watch from `version`; returns the last version seen when the server ends it."""
        settings = self._settings
        budget = settings.watch_seconds + settings.timeout
        what = f"watch {self._where()}"
        try:
            async with asyncio.timeout(settings.timeout):
                resp = await discovery.list_namespaced_endpoint_slice(
                    settings.namespace,
                    label_selector=settings.selector,
                    watch=True,
                    resource_version=version,
                    timeout_seconds=settings.watch_seconds,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(
                        sock_connect=settings.timeout, sock_read=budget
                    ),
                )
            async with resp:
                if not 200 <= resp.status < 300:
                    async with asyncio.timeout(settings.timeout):
                        await _answer(resp, what)
                return await self._read_events(resp, version, budget, sink, core)
        except (_Failed, _Gone):
            raise
        except TimeoutError as err:
            raise _Failed(f"{what}: no answer within {settings.timeout:g}s") from err
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise _Failed(f"{what}: {_describe(err, settings.timeout)}") from err

    async def _read_events(
        self,
        resp: aiohttp.ClientResponse,
        version: str,
        budget: float,
        sink: Sink,
        core: CoreV1Api,
    ) -> str:
        """Apply each newline-delimited event until the stream ends; the time spent waiting
        for the server is bounded by `budget`."""
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        waited = 0.0
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(max(0.0, budget - waited)):
                    chunk = await resp.content.readany()
            except TimeoutError as err:
                raise _Failed(
                    f"watch {self._where()}: not ended by the server within {budget:g}s"
                ) from err
            waited += loop.time() - started
            if not chunk:
                if buffer.strip():
                    version = await self._apply(json.loads(buffer), version, sink, core)
                self._progressed = True
                return version
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if line.strip():
                    version = await self._apply(json.loads(line), version, sink, core)
            if len(buffer) > MAX_EVENT_BYTES:
                raise _Failed(f"watch {self._where()}: an event over {MAX_EVENT_BYTES} bytes")

    async def _apply(self, event: Json, version: str, sink: Sink, core: CoreV1Api) -> str:
        """One watch event; returns the version to resume from."""
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise _Failed(f"watch {self._where()}: a malformed event")
        kind = event.get("type")
        obj = event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            message = _status_text(obj)
            if code == 410:
                raise _Gone(f"watch {self._where()}: 410 {message}")
            raise _Failed(f"watch {self._where()}: error event {code} {message}")
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or version)
        self._progressed = True
        if kind == "BOOKMARK":
            return version
        name = str(metadata.get("name"))
        if kind in ("ADDED", "MODIFIED"):
            self._slices[name] = obj
        elif kind == "DELETED":
            self._slices.pop(name, None)
        else:
            log.debug("kubernetes discovery: ignored a %r watch event", kind)
            return version
        await self._publish(sink, core)
        return version

    async def _publish(self, sink: Sink, core: CoreV1Api) -> None:
        try:
            found = endpoints(self._slices.values(), self._settings)
        except SliceError as err:
            sink.failed(str(err))
            return
        weights = await self._weights.of(core, found) if self._weights is not None else {}
        sink.publish(
            [Member(e.name, e.url, weights.get(e.name, 1.0), self._engine, e.ready) for e in found]
        )
