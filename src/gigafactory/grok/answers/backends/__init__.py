"""Answer backends behind one interface: ``compose(request) -> Iterator[str]``.

- ``offline`` (``extractive.ExtractiveBackend``): no model weights, deterministic;
- ``checkpoint`` (``checkpoint.CheckpointBackend``): the project's trained model, KV cache;
- ``remote`` (``remote.RemoteBackend``): any OpenAI-compatible server.
The two model backends see the posts only spotlighted (``prompt_messages``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from gigafactory.grok.answers.retrieve import Context
from gigafactory.grok.answers.spotlight import posts_block

_WORD = re.compile(r"\s*\S+\s*")
PERSONA = (
    "You are Grok, a chatbot with real-time access to a stream of posts. Answer briefly "
    "and truthfully from the posts; say when they do not answer the question."
)


@dataclass(frozen=True)
class Compose:
    """One answer to write: the chat turns (role, content), the context, and sampling."""

    turns: list[tuple[str, str]]
    context: Context
    temperature: float | None = None
    max_tokens: int | None = None


class Backend(Protocol):
    """Writes an answer as a stream of text pieces."""

    name: str
    description: str

    def compose(self, req: Compose) -> Iterator[str]: ...


def prompt_messages(req: Compose) -> list[tuple[str, str]]:
    """The chat for a model: one system turn (persona, the caller's system turns, the
    spotlighted posts), then the user and assistant turns."""
    system = [PERSONA] + [c for r, c in req.turns if r == "system"]
    if req.context.posts:
        system.append(posts_block(req.context.sources))
    return [("system", "\n\n".join(system))] + [(r, c) for r, c in req.turns if r != "system"]


def prompt_text(req: Compose) -> str:
    """The chat flattened for a plain language model, ending where Grok's turn begins."""
    names = {"system": "System", "user": "User", "assistant": "Grok"}
    lines = [f"{names[r]}: {c}" for r, c in prompt_messages(req)]
    return "\n\n".join([*lines, "Grok:"])


def words_of(text: str) -> Iterator[str]:
    """``text`` one word at a time, each with the whitespace around it (leading whitespace
    goes with the first word)."""
    for m in _WORD.finditer(text):
        yield m.group(0)
    if text and text.isspace():
        yield text
