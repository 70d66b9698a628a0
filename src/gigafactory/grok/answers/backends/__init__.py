"""Answer backends behind one interface: ``compose(request) -> Iterator[str]``.

- ``offline`` (``extractive.ExtractiveBackend``): no model weights, deterministic;
- ``checkpoint`` (``checkpoint.CheckpointBackend``): the project's trained model, KV cache;
- ``remote`` (``remote.RemoteBackend``): any OpenAI-compatible server.
The two model backends see the posts only spotlighted (``prompt_messages``). A backend may
also have ``prepare(request) -> request``, called before the answer starts: the checkpoint
backend fits its prompt to the model's context there (``fit_prompt``), keeping only the posts
that reach the model, so that only those are cited.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from gigafactory.grok.answers.errors import BackendError
from gigafactory.grok.answers.retrieve import Context
from gigafactory.grok.answers.spotlight import Source, posts_block

_WORD = re.compile(r"\s*\S+\s*")
PERSONA = (
    "You are Grok, a chatbot with real-time access to a stream of posts. Answer briefly "
    "and truthfully from the posts; say when they do not answer the question."
)
NAMES = {"system": "System", "user": "User", "assistant": "Grok"}
CUT = "… "  # marks where the start of a too-long question or post was cut


@dataclass(frozen=True)
class Compose:
    """One answer to write: the chat turns (role, content), the context, sampling (``seed``:
    the request's, for reproducible sampling), the answer's deadline (``time.monotonic()``
    seconds; backends that wait bound their waits by it) and, once a backend has fitted it
    (``prepare``), the prompt text it will use."""

    turns: list[tuple[str, str]]
    context: Context
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    deadline: float | None = None
    prompt: str | None = None


class Backend(Protocol):
    """Writes an answer as a stream of text pieces."""

    name: str
    description: str

    def compose(self, req: Compose) -> Iterator[str]: ...


def _system(sources: list[Source], system: list[str]) -> tuple[str, str]:
    parts = [PERSONA, *system]
    if sources:
        parts.append(posts_block(sources))
    return ("system", "\n\n".join(parts))


def prompt_messages(req: Compose) -> list[tuple[str, str]]:
    """The chat for a model: one system turn (persona, the caller's system turns, the
    spotlighted posts), then the user and assistant turns."""
    system = [c for r, c in req.turns if r == "system"]
    rest = [(r, c) for r, c in req.turns if r != "system"]
    return [_system(req.context.sources, system), *rest]


def flatten(messages: list[tuple[str, str]]) -> str:
    """Messages as plain text for a language model, ending where Grok's turn begins."""
    return "\n\n".join([*(f"{NAMES[r]}: {c}" for r, c in messages), "Grok:"])


def prompt_text(req: Compose) -> str:
    """The whole chat flattened for a plain language model (``prompt_messages``)."""
    return flatten(prompt_messages(req))


def _cut_start(text: str, keep_words: int) -> str:
    """``text`` less its first words, keeping the last ``keep_words`` (``CUT`` marks the cut)."""
    ws = text.split(" ")
    return text if keep_words >= len(ws) else CUT + " ".join(ws[len(ws) - keep_words :])


def _cut_end(text: str, keep_words: int) -> str:
    """The first ``keep_words`` words of ``text`` ("…" marks the cut)."""
    ws = text.split()
    return text if keep_words >= len(ws) else " ".join(ws[:keep_words]) + " …"


def _most(fits: Callable[[int], bool], n: int) -> int:
    """The largest k in 0..n with ``fits(k)`` (``fits`` is monotone: true up to some k)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_prompt(req: Compose, count: Callable[[str], int], budget: int) -> Compose:
    """The request with its prompt fitted to ``budget`` tokens (``count`` counts them), and its
    context cut to the posts that reach the prompt (a model reads a plain context window; what
    does not fit would be cut from its start, where the persona and the spotlighting
    instructions are). What goes in, in order of priority:

    1. always: the persona, the last user turn and what follows it, and when any post goes in,
       the spotlighting instructions with both delimiters around the posts;
       if those alone are too long, the start of the last user turn is cut (``CUT``);
    2. the posts by rank, [1] first; the first post that does not fit whole is cut to the
       words that fit, and the posts ranked below it are dropped;
    3. the caller's system turns, then the earlier turns, newest first, each whole or not at all.

    Raises ``BackendError`` when even (1) with one word of the question does not fit."""
    system = [c for r, c in req.turns if r == "system"]
    chat = [(r, c) for r, c in req.turns if r != "system"]
    last_user = max((i for i, (r, _c) in enumerate(chat) if r == "user"), default=len(chat))
    tail, history = chat[last_user:], chat[:last_user]
    sources = req.context.sources

    def text(srcs: list[Source], sys: list[str], hist: list[tuple[str, str]], t=None) -> str:
        return flatten([_system(srcs, sys), *hist, *(tail if t is None else t)])

    def fits(s: str) -> bool:
        return count(s) <= budget

    if not fits(text([], [], [])):
        question = tail[0][1] if tail else ""
        n_words = len(question.split(" "))

        def cut(k: int) -> list[tuple[str, str]]:
            return [("user", _cut_start(question, k)), *tail[1:]]

        keep = _most(lambda k: fits(text([], [], [], cut(k))), n_words)
        if keep == 0:
            need = count(text([], [], [], cut(1)))
            raise BackendError(
                f"the model's context holds {budget} tokens for the prompt; Grok's "
                f"instructions and the question need {need}: serve a model trained with a "
                "longer seq_len"
            )
        tail = cut(keep)
    k = _most(lambda k: fits(text(sources[:k], [], [])), len(sources))
    kept = sources[:k]
    if k < len(sources):
        nxt = sources[k]
        whole = len(nxt.text.split())

        def trimmed(w: int) -> list[Source]:
            return [*kept, replace(nxt, text=_cut_end(nxt.text, w))]

        w = _most(lambda w: fits(text(trimmed(w), [], [])), whole)
        if w > 0:
            kept = trimmed(w)
    n_sys = _most(lambda j: fits(text(kept, system[len(system) - j :], [])), len(system))
    sys = system[len(system) - n_sys :]
    n_hist = _most(lambda j: fits(text(kept, sys, history[len(history) - j :])), len(history))
    prompt = text(kept, sys, history[len(history) - n_hist :])
    ctx = req.context
    context = replace(ctx, posts=ctx.posts[: len(kept)], similar=ctx.similar[: len(kept)])
    return replace(req, context=context, prompt=prompt)


def words_of(text: str) -> Iterator[str]:
    """``text`` one word at a time, each with the whitespace around it (leading whitespace
    goes with the first word)."""
    for m in _WORD.finditer(text):
        yield m.group(0)
    if text and text.isspace():
        yield text
