"""Simulated chat users for kvrouter, for locust.

Each user runs one chat session at a time: several turns (a heavy-tailed number of them), the
whole growing history sent every turn, a think time between turns, a system prompt shared with
other users, streamed replies. Time to first token is reported as its own entry ("TTFT"), the
whole turn as "chat turn"; the share of prompt tokens served from cache is printed at the end.

Against the demo (from the repository root):

    python -m router demo --port 8080 &
    locust -f loadtests/locustfile.py --headless -u 20 -r 5 --run-time 60s \\
        --host http://127.0.0.1:8080 --think-min 1 --think-max 4
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment

from loadtests.workload import PROFILES, SYSTEM_POPULARITY, SYSTEM_PROMPTS, user_text

PROFILE = PROFILES["uniform"]


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--think-min", type=float, default=2.0, help="seconds between turns, min")
    parser.add_argument("--think-max", type=float, default=8.0, help="seconds between turns, max")
    parser.add_argument("--max-tokens", type=int, default=64, help="reply length in tokens")
    parser.add_argument("--model", default="sim-model")


@dataclass
class CacheTotals:
    """Prompt and cached tokens over the run, from each reply's `usage`."""

    prompt: int = 0
    cached: int = 0


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    environment.cache_totals = CacheTotals()  # type: ignore[attr-defined]


def totals(environment: Environment) -> CacheTotals:
    return environment.cache_totals  # type: ignore[attr-defined]


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    figures = totals(environment)
    if figures.prompt:
        share = figures.cached / figures.prompt
        print(f"prefix cache: {share:.1%} of {figures.prompt} prompt tokens served from cache")


class ChatUser(HttpUser):
    """One session at a time; a new session (new id, new system prompt) when one ends."""

    def on_start(self) -> None:
        self.rng = random.Random()
        self.new_session()

    def new_session(self) -> None:
        self.session_id = f"locust-{uuid.uuid4().hex[:12]}"
        system = self.rng.choices(range(len(SYSTEM_PROMPTS)), weights=SYSTEM_POPULARITY)[0]
        self.history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPTS[system]}]
        drawn = int(PROFILE.min_turns * self.rng.paretovariate(PROFILE.pareto_alpha))
        self.turns_left = max(PROFILE.min_turns, min(PROFILE.max_turns, drawn))
        self.turn = 0

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        low = getattr(options, "think_min", 2.0)
        high = getattr(options, "think_max", 8.0)
        return self.rng.uniform(low, max(low, high))

    @task
    def chat_turn(self) -> None:
        if self.turns_left <= 0:
            self.new_session()
        self.turn += 1
        self.turns_left -= 1
        options = self.environment.parsed_options
        message = {"role": "user", "content": user_text(self.rng, PROFILE.user_words, self.turn)}
        body = {
            "model": getattr(options, "model", "sim-model"),
            "messages": [*self.history, message],
            "max_tokens": getattr(options, "max_tokens", 64),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        reply = self.stream(body)
        if reply is None:
            self.new_session()
            return
        self.history += [message, {"role": "assistant", "content": reply}]

    def stream(self, body: dict[str, Any]) -> str | None:
        """Send one streamed turn; report TTFT apart; the reply text, or None on failure."""
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        headers = {"x-session-id": self.session_id}
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, stream=True,
            catch_response=True, name="chat turn",
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return None
            done, usage, error = False, None, None
            for line in resp.iter_lines():
                if line.startswith(b"event: error"):
                    error = "the stream ended with an error event"
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        first = first or time.perf_counter()
                        pieces.append(content)
                usage = chunk.get("usage") or usage
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if error or not done:
                resp.failure(error or "the stream ended before [DONE]")
                return None
            resp.success()
        if first is not None:
            self.environment.events.request.fire(
                request_type="TTFT", name="time to first token",
                response_time=(first - started) * 1000, response_length=0, exception=None,
                context={},
            )  # fmt: skip
        if usage:
            figures = totals(self.environment)
            figures.prompt += usage.get("prompt_tokens", 0)
            figures.cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return "".join(pieces)
