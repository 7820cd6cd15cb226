"""The oracle hit ratio: every turn of a session served by one worker, caches as big as the
real workers', and the load spread evenly; what perfect affinity would reach.

Replays the workload in the order it is planned (by scheduled time when every turn has one,
else in lockstep: every user's k-th request at step k), renders and tokenizes each prompt
exactly as the simulated worker does, and keeps one LRU prefix cache per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loadtests.workload import SessionPlan, chat_body
from router.sim.cache import PrefixCache, block_hashes
from router.sim.reply import generate_reply
from router.sim.template import close_assistant_turn, render_chat
from router.sim.tokens import tokenize

_TURN_END = tuple(tokenize(close_assistant_turn("", "")))

Assign = Callable[[str, int, list[int]], int]


@dataclass(frozen=True, slots=True)
class CacheFigures:
    """Prompt and cached tokens over the workload, its requests and their body bytes."""

    prompt_tokens: int
    cached_tokens: int
    body_bytes: int = 0
    requests: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def bytes_per_token(self) -> float:
        """Request-body bytes per prompt token: what the router's cost model needs to know."""
        return self.body_bytes / self.prompt_tokens if self.prompt_tokens else 0.0


def least_active(session: str, step: int, active: list[int]) -> int:
    """Sticky and balanced: a new session goes to the worker with the fewest active ones."""
    return min(range(len(active)), key=lambda w: (active[w], w))


class _Replay:
    def __init__(self, workers: int, capacity_tokens: int, block_size: int, seed: int) -> None:
        self.caches = [PrefixCache(capacity_tokens // block_size) for _ in range(workers)]
        self.block_size = block_size
        self.seed = seed
        self.prompt = 0
        self.cached = 0
        self.body_bytes = 0

    def serve(self, worker: int, messages: list[tuple[str, str]], max_tokens: int) -> str:
        """One request: count its cache hit, keep its transcript, return the reply text."""
        ids = tokenize(render_chat(messages))
        hashes = block_hashes(ids, self.block_size)
        cache = self.caches[worker]
        self.body_bytes += len(chat_body(messages, max_tokens))
        self.prompt += len(ids)
        self.cached += cache.match(hashes) * self.block_size
        reply = generate_reply(ids, self.seed, max_tokens, leading_space=False)
        transcript = [*ids, *reply.token_ids, *_TURN_END]
        cache.insert(block_hashes(transcript, self.block_size, hashes))
        return reply.text


def replay(
    users: Sequence[Sequence[SessionPlan]],
    workers: int,
    capacity_tokens: int,
    block_size: int = 16,
    seed: int = 0,
    assign: Assign = least_active,
    per_request: Callable[[str, int], int] | None = None,
) -> CacheFigures:
    """Cached and prompt tokens over the whole workload. `assign` places each session when it
    starts; `per_request(session, request_index)`, when given, places every request instead
    (to estimate policies that ignore keys)."""
    state = _Replay(workers, capacity_tokens, block_size, seed)
    cursors = [_UserCursor(sessions) for sessions in users]
    active = [0] * workers
    counter = 0
    for step, index in _order(users):
        cursor = cursors[index]
        if cursor.starting:
            cursor.worker = assign(cursor.session.id, step, active)
            active[cursor.worker] += 1
        for text in cursor.turn.users_text:
            worker = cursor.worker if per_request is None else per_request("", counter)
            counter += 1
            reply = state.serve(worker, [*cursor.messages, ("user", text)], cursor.max_tokens)
            if text is cursor.turn.users_text[0]:
                first = reply
        cursor.advance(first)
        if cursor.starting or cursor.done:
            active[cursor.previous_worker] -= 1
    return CacheFigures(state.prompt, state.cached, state.body_bytes, counter)


def _order(users: Sequence[Sequence[SessionPlan]]) -> Iterator[tuple[float, int]]:
    """(when, user) for every turn of every user, in the order they are played: by scheduled
    time when every turn has one, else the user's k-th turn at step k (ties: by user)."""
    turns = [[t.at for s in sessions for t in s.turns] for sessions in users]
    scheduled = all(at is not None for times in turns for at in times)
    events = [
        (at if scheduled and at is not None else float(k), index)
        for index, times in enumerate(turns)
        for k, at in enumerate(times)
    ]
    return iter(sorted(events))


class _UserCursor:
    """Where one user is in its sessions, with the conversation so far."""

    def __init__(self, sessions: Sequence[SessionPlan]) -> None:
        self._sessions = sessions
        self._index = 0
        self._turn = 0
        self.worker = 0
        self.previous_worker = 0
        self.messages: list[tuple[str, str]] = []
        self.starting = True
        self._reset()

    @property
    def done(self) -> bool:
        return self._index >= len(self._sessions)

    @property
    def session(self) -> SessionPlan:
        return self._sessions[self._index]

    @property
    def turn(self):
        return self.session.turns[self._turn]

    @property
    def max_tokens(self) -> int:
        return self.turn.max_tokens

    def _reset(self) -> None:
        if not self.done:
            system = self.session.system
            self.messages = [("system", system)] if system else []

    def advance(self, reply: str) -> None:
        self.messages += [("user", self.turn.users_text[0]), ("assistant", reply)]
        self._turn += 1
        self.previous_worker = self.worker
        self.starting = self._turn >= len(self.session.turns)
        if self.starting:
            self._index += 1
            self._turn = 0
            self._reset()
