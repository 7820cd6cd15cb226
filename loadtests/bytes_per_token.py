"""Request-body bytes per prompt token: the default of `routing.cost.bytes_per_token`.

    python -m loadtests.bytes_per_token

Builds the chat-completion bodies a client sends turn after turn (the whole history each time)
and divides their JSON size by the prompt tokens of their messages (cl100k_base, plus the
chat template's 4 tokens a message). Two corpora: the seeded benchmark workload, and English
prose (the paragraphs of this repository's README.md) as a stand-in for real chats.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import quicktok

from loadtests.workload import PROFILES, SYSTEM_PROMPTS, plan_users, user_text

PER_MESSAGE = 4
README = Path(__file__).resolve().parent.parent / "README.md"


def bodies(turns: list[tuple[str, str]], system: str) -> Iterator[tuple[bytes, list[dict]]]:
    messages: list[dict] = [{"role": "system", "content": system}]
    for question, answer in turns:
        messages.append({"role": "user", "content": question})
        body = {"model": "m", "messages": messages, "max_tokens": 128, "stream": True}
        yield orjson.dumps(body), list(messages)
        messages.append({"role": "assistant", "content": answer})


def ratio(conversations: list[tuple[str, list[tuple[str, str]]]]) -> tuple[float, int]:
    encoder = quicktok.get_encoding("cl100k_base")
    size = tokens = 0
    for system, turns in conversations:
        for body, messages in bodies(turns, system):
            size += len(body)
            tokens += sum(
                PER_MESSAGE + encoder.count(f"{m['role']}\n{m['content']}") for m in messages
            )
    return size / tokens, tokens


def workload_conversations(limit: int = 40) -> list[tuple[str, list[tuple[str, str]]]]:
    rng = random.Random(3)
    found = []
    for sessions in plan_users(PROFILES["uniform"], seed=1)[:limit]:
        plan = sessions[0]
        turns = [(t.users_text[0], user_text(rng, (40, 160), i)) for i, t in enumerate(plan.turns)]
        found.append((SYSTEM_PROMPTS[plan.system], turns))
    return found


def prose_conversations() -> list[tuple[str, list[tuple[str, str]]]]:
    paragraphs = [
        p.replace("\n", " ").strip()
        for p in README.read_text().split("\n\n")
        if len(p) > 200 and not p.lstrip().startswith(("|", "```", "#", "-"))
    ]
    pairs = list(zip(paragraphs[::2], paragraphs[1::2], strict=False))
    return [("You are a helpful assistant.", pairs[i : i + 6]) for i in range(0, len(pairs), 6)]


def main() -> int:
    print(f"{'corpus':<34}{'bytes/token':>12}{'tokens':>10}")
    for name, conversations in (
        ("benchmark workload (uniform)", workload_conversations()),
        ("English prose (README.md)", prose_conversations()),
    ):
        value, tokens = ratio(conversations)
        print(f"{name:<34}{value:>12.2f}{tokens:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
