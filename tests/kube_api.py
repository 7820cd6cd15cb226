"""A local HTTP server that speaks the Kubernetes API server's list/watch protocol for
EndpointSlices (and GET pod), for tests; and a kubeconfig pointing at it.

The server keeps the slices and a history of watch events by resourceVersion, so a watch from
an older version replays what it missed, as the API server does; the test drives it: changes
slices (each an event to the open watches), sends bookmarks, ends watches (their timeout),
compacts the history (410 Gone), answers errors, goes away and comes back. Every request is
recorded with its query and Authorization header.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from router.tooling.launch import free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kubernetes"
NAMESPACE = "inference"
SELECTOR = "kubernetes.io/service-name=vllm"
TOKEN = "kvrouter-test-token-0123456789"
WEIGHT = "kvrouter.io/weight"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/inference/endpointslices"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer:
    """List and watch EndpointSlices in one namespace, GET pods; see the module's docstring."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.version = 1000
        self.slices: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.compacted = 0  # watches from a version older than this get 410 Gone
        self.gone_as_answer = False  # 410 as the HTTP answer instead of an ERROR event
        self.answers: list[int] = []  # statuses to answer the next slice requests with
        self.stall_lists = False  # lists get no answer
        self.endless_watches = False  # watches ignore timeoutSeconds
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self._watches: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._runner: web.AppRunner | None = None

    # --- what the test sees
    @property
    def lists(self) -> list[dict[str, str]]:
        return [q for path, q, _ in self.requests if path == SLICES and not _watching(q)]

    @property
    def watches(self) -> list[dict[str, str]]:
        return [q for path, q, _ in self.requests if path == SLICES and _watching(q)]

    @property
    def pod_reads(self) -> list[str]:
        return [path.rsplit("/", 1)[1] for path, _, _ in self.requests if "/pods/" in path]

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # --- what the test does
    def put(self, item: dict[str, Any]) -> int:
        """Create or replace a slice: an ADDED or MODIFIED event."""
        name = item["metadata"]["name"]
        kind = "MODIFIED" if name in self.slices else "ADDED"
        item = self._stamp(copy.deepcopy(item))
        self.slices[name] = item
        self._record({"type": kind, "object": item})
        return self.version

    def delete(self, name: str) -> int:
        item = self._stamp(self.slices.pop(name))
        self._record({"type": "DELETED", "object": item})
        return self.version

    def bookmark(self) -> int:
        """Other objects changed: the version moves on, and open watches hear a BOOKMARK."""
        self.version += 10
        obj = {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.version)},
        }
        self._send({"type": "BOOKMARK", "object": obj})
        return self.version

    def expire(self) -> None:
        """End every open watch, as its timeoutSeconds would."""
        for queue in self._watches:
            queue.put_nowait(None)

    def compact(self) -> None:
        """Forget the history up to now: open watches end, with a 410 ERROR event unless
        `gone_as_answer`; a watch from an older version gets 410 (an ERROR event, or the
        answer)."""
        self.compacted = self.version
        self.history.clear()
        if not self.gone_as_answer:
            self._send({"type": "ERROR", "object": fixture("status-410-expired.json")})
        self.expire()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self._slices)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._pod)
        # a watch whose client left ends at once, so `open_watches` counts live ones
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.expire()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- inside
    def _stamp(self, item: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        item["metadata"]["resourceVersion"] = str(self.version)
        return item

    def _record(self, event: dict[str, Any]) -> None:
        self.history.append((self.version, event))
        self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        for queue in self._watches:
            queue.put_nowait(event)

    def _refuse(self, request: web.Request) -> web.Response | None:
        self.requests.append(
            (request.path, dict(request.query), request.headers.get("Authorization"))
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        if request.match_info["ns"] != NAMESPACE:
            return web.json_response(status(403, "Forbidden", "wrong namespace"), status=403)
        return None

    async def _slices(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        if self.answers:
            code = self.answers.pop(0)
            return web.json_response(status(code, "InternalError", "etcd is down"), status=code)
        selector = request.query.get("labelSelector", "")
        key, _, value = selector.partition("=")
        matching = [s for s in self.slices.values() if s["metadata"]["labels"].get(key) == value]
        if not _watching(request.query):
            if self.stall_lists:
                await asyncio.sleep(3600)
            return web.json_response(
                {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": sorted(matching, key=lambda s: s["metadata"]["name"]),
                }
            )
        return await self._watch(request, key, value)

    async def _watch(self, request: web.Request, key: str, value: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        if since < self.compacted and self.gone_as_answer:
            body = fixture("status-410-expired.json")
            return web.json_response(body, status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < self.compacted:
            await _write(response, {"type": "ERROR", "object": fixture("status-410-expired.json")})
            return response
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, event in self.history:
            if version > since:
                queue.put_nowait(event)
        self._watches.add(queue)
        try:
            timeout = 3600.0 if self.endless_watches else float(request.query["timeoutSeconds"])
            async with asyncio.timeout(timeout):
                while (event := await queue.get()) is not None:
                    labels = event["object"].get("metadata", {}).get("labels")
                    if labels is None or labels.get(key) == value:
                        await _write(response, event)
        except TimeoutError:
            pass
        finally:
            self._watches.discard(queue)
        return response

    async def _pod(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return web.json_response(status(404, "NotFound", "pods not found"), status=404)
        return web.json_response(pod)


def _watching(query: dict[str, str]) -> bool:
    return query.get("watch", "").lower() in ("1", "true")


async def _write(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "router", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "test",
                        "context": {"cluster": "test", "user": "router", "namespace": NAMESPACE},
                    }
                ],
                "current-context": "test",
            }
        )
    )
    return path
