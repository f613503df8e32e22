"""The one prompt builder: chat messages + soft tokens -> a chat-templated SoftPrompt.

Training and serving both call `build_soft_prompt`, so the soft tokens sit at exactly
the same place in the prompt the projector was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from curp_chain.errors import CurpError
from curp_chain.protocols import SoftPrompt, SoftVectors

Role = Literal["system", "user", "assistant", "tool"]

SOFT_MARKER = "\ue000curp-soft\ue000"
"""Stands for the soft tokens while the template renders; private-use characters, so user
text cannot contain it by accident (and any copy in user text is removed)."""


@dataclass(frozen=True)
class ChatTurn:
    role: Role
    content: str


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    # The same environment settings transformers uses for apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(
    template: str,
    turns: Sequence[ChatTurn],
    special_tokens: Mapping[str, str],
    *,
    add_generation_prompt: bool = True,
) -> str:
    messages = [{"role": t.role, "content": t.content} for t in turns]
    try:
        return str(
            _compile(template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=special_tokens.get("bos_token", ""),
                eos_token=special_tokens.get("eos_token", ""),
            )
        )
    except TemplateError as error:
        raise CurpError(f"the model's chat template rejected the messages: {error}") from None


def build_soft_prompt(
    template: str,
    turns: Sequence[ChatTurn],
    soft: SoftVectors | None,
    special_tokens: Mapping[str, str],
) -> SoftPrompt:
    """Render ``turns`` and splice ``soft`` at the start of the last user turn's content.

    The last user turn is where the request is; the soft tokens precede its text, on a line
    of their own. Everything after them (the request and the assistant header) stays text,
    so a soft token is never the last position of the prompt.
    """
    clean = [ChatTurn(t.role, t.content.replace(SOFT_MARKER, "")) for t in turns]
    if soft is None or len(soft) == 0:
        return SoftPrompt(render_chat(template, clean, special_tokens), None, "")
    last_user = max((i for i, t in enumerate(clean) if t.role == "user"), default=None)
    if last_user is None:
        raise CurpError("a personalized prompt needs at least one user (human) message")
    marked = list(clean)
    marked[last_user] = ChatTurn("user", SOFT_MARKER + "\n" + clean[last_user].content)
    text = render_chat(template, marked, special_tokens)
    before, found, after = text.partition(SOFT_MARKER)
    if not found or SOFT_MARKER in after:
        raise CurpError("the chat template did not keep the user message intact")
    return SoftPrompt(before, soft, after)
