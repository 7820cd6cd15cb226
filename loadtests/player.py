"""Play a planned workload against a router over real HTTP and record every request.

Each user is a coroutine running its sessions back to back: it sends the growing history as a
streaming chat completion, reads the reply chunk by chunk (noting the first token), appends the
reply to the history and thinks before the next turn, or waits for the turn's scheduled time
(`TurnPlan.at`). Think and scheduled times are in simulated seconds and are scaled by the
workers' clock so the whole run keeps the shape of real time.

While it plays, `Player.in_flight` shows the requests under way as the client sees them so far
(the worker that started each, the text received); a player given `watch` keeps, on the
records it picks, the arrival time of every event of the stream (see `Record.events`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from loadtests.workload import SessionPlan, TurnPlan, chat_body


@dataclass(frozen=True, slots=True)
class Record:
    """One request; times are seconds since the start of the run."""

    user: int
    session: str
    turn: int
    started: float
    first_token: float | None
    ended: float
    status: int
    worker: str
    route: str
    rehomed: str
    prompt_tokens: int
    cached_tokens: int
    error: str = ""
    # When the response head came, then when each SSE event did (kept when watched).
    events: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


def _scheduled(sessions: Sequence[SessionPlan]) -> bool:
    """Whether this user's first turn has a scheduled time (then it needs no random start)."""
    return bool(sessions and sessions[0].turns and sessions[0].turns[0].at is not None)


@dataclass(slots=True, eq=False)
class Stream:
    """A request under way, as its client has it so far; times as in `Record`."""

    session: str
    messages: list[tuple[str, str]]
    started: float
    worker: str = ""  # from the response head, once it came
    pieces: list[str] = field(default_factory=list)
    events: list[float] = field(default_factory=list)  # the head's, then (watched) each event's
    ended: float | None = None

    @property
    def received(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class _Reply:
    text: str
    first_token: float | None
    prompt_tokens: int
    cached_tokens: int
    error: str


class Player:
    """Runs users against one router URL; `records` fills as requests finish."""

    def __init__(
        self,
        url: str,
        time_scale: float,
        *,
        send_session_id: bool = True,
        request_timeout: float = 120.0,
        on_record: Callable[[Record], None] | None = None,
        watch: Callable[[float, float], bool] | None = None,
    ) -> None:
        """`watch(started, ended)`, asked when a request ends, says whether its record keeps
        its events' arrival times; without it no record does."""
        self._url = url + "/v1/chat/completions"
        self._scale = time_scale
        self._send_session_id = send_session_id
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=5)
        self._on_record = on_record
        self._watch = watch
        self._t0 = 0.0
        self._open: set[Stream] = set()
        self.records: list[Record] = []

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def in_flight(self) -> list[Stream]:
        """The requests sent and not yet ended (live objects: they keep filling)."""
        return list(self._open)

    async def run(self, users: Sequence[Sequence[SessionPlan]], seed: int = 0) -> float:
        """Play every user to the end; returns the wall-clock seconds it took."""
        rng = random.Random(seed)
        width = max((len(t.users_text) for u in users for s in u for t in s.turns), default=1)
        connector = aiohttp.TCPConnector(limit=len(users) * width + 8)
        self._t0 = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=self._timeout) as http:
            first_think = max((t.think for u in users for s in u for t in s.turns), default=0.0)
            delays = [
                0.0 if _scheduled(sessions) else rng.uniform(0, first_think) * self._scale
                for sessions in users
            ]
            await asyncio.gather(
                *(self._user(http, i, sessions, delays[i]) for i, sessions in enumerate(users))
            )
        return self.now()

    async def _user(
        self, http: aiohttp.ClientSession, user: int, sessions: Sequence[SessionPlan], delay: float
    ) -> None:
        await asyncio.sleep(delay)
        for plan in sessions:
            history: list[tuple[str, str]] = [("system", plan.system)] if plan.system else []
            for number, turn in enumerate(plan.turns, start=1):
                if turn.at is not None:
                    await asyncio.sleep(max(0.0, turn.at * self._scale - self.now()))
                elif number > 1:
                    await asyncio.sleep(turn.think * self._scale)
                reply = await self._turn(http, user, plan.id, number, history, turn)
                history.append(("user", turn.users_text[0]))
                if reply is not None:
                    history.append(("assistant", reply))

    async def _turn(
        self,
        http: aiohttp.ClientSession,
        user: int,
        session: str,
        number: int,
        history: list[tuple[str, str]],
        turn: TurnPlan,
    ) -> str | None:
        """All requests of one turn (several for an agent's fan-out); the first one's reply."""
        requests = [
            self._request(http, user, session, number, [*history, ("user", t)], turn.max_tokens)
            for t in turn.users_text
        ]  # fmt: skip
        replies = await asyncio.gather(*requests)
        return replies[0]

    async def _request(
        self,
        http: aiohttp.ClientSession,
        user: int,
        session: str,
        number: int,
        messages: list[tuple[str, str]],
        max_tokens: int,
    ) -> str | None:
        body = chat_body(messages, max_tokens)
        headers = {"content-type": "application/json"}
        if self._send_session_id:
            headers["x-session-id"] = session
        stream = Stream(session, messages, self.now())
        self._open.add(stream)
        status, route, rehomed = 0, "", ""
        try:
            async with http.post(self._url, data=body, headers=headers) as resp:
                status = resp.status
                stream.worker = resp.headers.get("x-kvrouter-worker", "")
                stream.events.append(self.now())
                route = resp.headers.get("x-kvrouter-route", "")
                rehomed = resp.headers.get("x-kvrouter-rehomed", "")
                if status != 200:
                    reply = _Reply("", None, 0, 0, (await resp.text())[:200])
                else:
                    reply = await self._read_stream(resp, stream)
        except (aiohttp.ClientError, TimeoutError) as err:
            reply = _Reply("", None, 0, 0, repr(err)[:200])
        finally:
            self._open.discard(stream)
            stream.ended = ended = self.now()
        watch = self._watch
        events = tuple(stream.events) if watch is not None and watch(stream.started, ended) else ()
        record = Record(
            user, session, number, stream.started, reply.first_token, ended, status,
            stream.worker, route, rehomed, reply.prompt_tokens, reply.cached_tokens, reply.error,
            events,
        )  # fmt: skip
        self.records.append(record)
        if self._on_record is not None:
            self._on_record(record)
        return reply.text if record.ok else None

    async def _read_stream(self, resp: aiohttp.ClientResponse, stream: Stream) -> _Reply:
        pieces = stream.pieces
        events = stream.events if self._watch is not None else None
        first: float | None = None
        usage: dict[str, Any] = {}
        done = False
        error = ""
        async for line in resp.content:
            if line.startswith(b"event: error"):
                error = "stream ended with an error event"
            if not line.startswith(b"data: "):
                continue
            if events is not None:
                events.append(self.now())
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = orjson.loads(data)
            if "error" in chunk:
                error = str(chunk["error"].get("message", "error"))[:200]
                continue
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = self.now()
                    pieces.append(content)
            if chunk.get("usage"):
                usage = chunk["usage"]
        if not done and not error:
            error = "stream ended before [DONE]"
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return _Reply("".join(pieces), first, usage.get("prompt_tokens", 0), cached, error)
