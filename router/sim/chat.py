"""The prompt of a chat request: the template, vLLM's continuation of a final message, or
llama.cpp's assistant prefill.

vLLM (and SGLang) continue a final assistant message when asked with
`continue_final_message: true, add_generation_prompt: false`; the reply holds only the new
text. llama.cpp's server continues a final assistant message by itself, without parameters,
and echoes that message's text at the start of its reply; a worker started with
`--echo-prefill` does the same. Either way the prompt ends inside the open assistant turn, so
the reply is the rest of the one an undisturbed worker gives (see `router.sim.reply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.sim.template import render_chat, render_open_turn
from router.sim.validation import InvalidRequest, optional

BOTH_PROMPT_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
TWO_ASSISTANT_MESSAGES = "Cannot have 2 or more assistant messages at the end of the list."
ASSISTANT = "assistant"


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered chat prompt. `prefill` is the text of the final assistant message the prompt
    ends with when that turn is continued ("" otherwise); with `echo` the reply's content
    starts with it."""

    text: str
    prefill: str = ""
    echo: bool = False


def chat_prompt(
    body: dict[str, Any], messages: Sequence[tuple[str, str]], *, echo_prefill: bool
) -> ChatPrompt:
    """The prompt for `messages` under the request's `continue_final_message` (default false)
    and `add_generation_prompt` (default true), as vLLM reads them:
    - both true is refused (400), as vLLM refuses it;
    - `continue_final_message` needs a final `assistant` message (400 otherwise; vLLM itself
      would continue a final message of any role), whose turn the prompt leaves open;
    - otherwise the template, with the assistant cue unless `add_generation_prompt` is false.
    With `echo_prefill` (llama.cpp) a final assistant message is always continued and echoed,
    `continue_final_message` is ignored (llama.cpp does not know it) and `add_generation_prompt`
    applies to the messages before it, as in llama.cpp; two assistant messages at the end are
    refused as llama.cpp refuses them."""
    add_generation_prompt = optional(body, "add_generation_prompt", bool, default=True)
    if echo_prefill and messages[-1][0] == ASSISTANT:
        return _llama_cpp_prefill(messages, add_generation_prompt)
    continue_final = optional(body, "continue_final_message", bool, default=False)
    if not continue_final:
        return ChatPrompt(render_chat(messages, add_generation_prompt))
    if add_generation_prompt:
        raise InvalidRequest(BOTH_PROMPT_FLAGS, "continue_final_message")
    role, partial = messages[-1]
    if role != ASSISTANT:
        raise InvalidRequest(
            "`continue_final_message` needs a final message from the assistant to continue; "
            f"the last message is from '{role}'.",
            "continue_final_message",
        )
    return ChatPrompt(render_open_turn(messages[:-1], partial), prefill=partial)


def _llama_cpp_prefill(
    messages: Sequence[tuple[str, str]], add_generation_prompt: bool
) -> ChatPrompt:
    history, (_, partial) = messages[:-1], messages[-1]
    if history and history[-1][0] == ASSISTANT:
        raise InvalidRequest(TWO_ASSISTANT_MESSAGES, "messages")
    text = render_chat(history, add_generation_prompt) + partial
    return ChatPrompt(text, prefill=partial, echo=True)
