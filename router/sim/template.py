"""The fixed chat template: `<|role|>\\ncontent\\n` per message, then `<|assistant|>\\n`; or an
assistant turn left open for its continuation."""

from __future__ import annotations

from collections.abc import Iterable

GENERATION_PROMPT = "<|assistant|>\n"


def render_chat(messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    """Prompt text for `(role, content)` pairs, ending with the assistant cue when asked."""
    text = "".join(f"<|{role}|>\n{content}\n" for role, content in messages)
    return text + GENERATION_PROMPT if add_generation_prompt else text


def close_assistant_turn(prompt: str, reply: str) -> str:
    """`render_chat(messages + [("assistant", reply)], False)` given the rendered `prompt`
    of `messages`: what the next turn of the same conversation starts with."""
    return f"{prompt}{reply}\n"


def render_open_turn(messages: Iterable[tuple[str, str]], partial: str) -> str:
    """Prompt text that continues `partial`, an assistant message being written after
    `messages`: their rendering with the assistant cue, then `partial` with no newline, the turn
    left open. It is `render_chat(messages + [("assistant", partial)], False)` cut right after
    `partial`, what vLLM's `continue_final_message` makes of a template."""
    return render_chat(messages) + partial
