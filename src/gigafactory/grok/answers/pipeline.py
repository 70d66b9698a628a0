"""The answer pipeline: understand -> retrieve -> compose -> guard, as one generator.

``AnswerPipeline.start`` does the blocking part (question understanding and retrieval) and
returns an ``Answer`` whose ``pieces()`` yields the checked answer one word at a time; the
non-streamed and the streamed API responses both consume it, so they share every step
(as vLLM's OpenAI server shares its engine generator between both).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any

from gigafactory.grok.answers.backends import Backend, Compose, words_of
from gigafactory.grok.answers.backends.checkpoint import CheckpointBackend
from gigafactory.grok.answers.backends.extractive import ExtractiveBackend
from gigafactory.grok.answers.backends.remote import RemoteBackend
from gigafactory.grok.answers.errors import AnswerError, BackendError, BackendTimeout, UnknownModel
from gigafactory.grok.answers.guard import AnswerGuard, canaries
from gigafactory.grok.answers.question import understand
from gigafactory.grok.answers.retrieve import Context, SearchParams, iso_utc, retrieve
from gigafactory.grok.answers.spotlight import parse_posts_block
from gigafactory.grok.memory.search import Hit
from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.settings import GrokSettings

ALIAS = "grok"  # the configured default backend


class MessageTooLarge(AnswerError):
    """A message is longer than the service accepts."""

    status = 413


@dataclass(frozen=True)
class ChatInput:
    """One chat request, as the pipeline takes it."""

    turns: list[tuple[str, str]]
    model: str = ALIAS
    search: SearchParams = field(default_factory=SearchParams)
    temperature: float | None = None
    max_tokens: int | None = None
    return_citations: bool = True
    seed: int | None = None


@dataclass
class AnswerMetrics:
    """Counters over all answers since start (``GET /v1/chat/metrics``)."""

    answers: int = 0
    removed_markers: int = 0
    removed_canaries: int = 0
    backend_errors: int = 0
    backend_timeouts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def _given_posts(turns: list[tuple[str, str]]) -> list[Hit] | None:
    """Posts of a spotlighted block in a system turn, as hits numbered as given."""
    for role, content in turns:
        sources = parse_posts_block(content) if role == "system" else None
        if sources:
            out = []
            for s in sources:
                created = datetime.fromisoformat(s.created_at.replace("Z", "+00:00"))
                us = int(created.timestamp() * 1e6)
                out.append(
                    Hit(f"given-{s.n}", s.author, s.text, us, "und", 0, 0, 0, None, None, 0, 0)
                )
            return out
    return None


class Answer:
    """One answer being written; ``pieces()`` may be consumed once."""

    def __init__(
        self,
        backend: Backend,
        req: Compose,
        deadline_s: float,
        metrics: AnswerMetrics,
        citation_url: str,
        return_citations: bool,
    ):
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.backend = backend
        self.req = req
        self.context = req.context
        if req.deadline is None:  # ``AnswerPipeline.start`` sets it from ``deadline_s``
            raise ValueError("an answer needs its request's deadline (Compose.deadline)")
        self.deadline = req.deadline
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.citation_url = citation_url
        self.return_citations = return_citations
        self.guard = AnswerGuard(
            len(req.context.posts), canaries(h.text for h in req.context.posts)
        )
        self.finish_reason = "stop"
        self.completion_tokens = 0

    def _checked(self) -> Iterator[list[str]]:
        """The backend's pieces through the guard, as words; stops at ``max_tokens`` words
        (``finish_reason`` "length") or raises ``BackendTimeout`` past the deadline. The
        deadline is checked here between pieces; a backend that waits (the remote one's
        reads, the checkpoint's turn at the model) bounds each wait by ``req.deadline``."""
        pieces = self.backend.compose(self.req)
        limit = self.req.max_tokens
        try:
            for piece in chain(pieces, [None]):  # None: the end, flush what the guard holds
                if time.monotonic() > self.deadline:
                    raise BackendTimeout(
                        f"{self.backend.name} did not finish within {self.deadline_s:g} s"
                    )
                safe = self.guard.flush() if piece is None else self.guard.feed(piece)
                words = list(words_of(safe))
                if limit is not None and len(words) > limit - self.completion_tokens:
                    words = words[: limit - self.completion_tokens]
                    self.finish_reason = "length"
                self.completion_tokens += len(words)
                if words:
                    yield words
                if self.finish_reason == "length":
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    def batches(self) -> Iterator[list[str]]:
        """The checked answer as lists of words (each with its trailing space): one list per
        piece the backend wrote, so a consumer in another thread hops once per piece, not
        once per word. Raises ``BackendError``/``BackendTimeout`` with the reason when the
        backend fails."""
        try:
            yield from self._checked()
        except BackendTimeout:
            self.metrics.add(backend_timeouts=1)
            raise
        except BackendError:
            self.metrics.add(backend_errors=1)
            raise
        except Exception as exc:
            self.metrics.add(backend_errors=1)
            raise BackendError(f"{self.backend.name} failed: {type(exc).__name__}: {exc}") from exc
        self.metrics.add(
            answers=1,
            removed_markers=self.guard.removed_markers,
            removed_canaries=self.guard.removed_canaries,
        )

    def pieces(self) -> Iterator[str]:
        """The checked answer one word at a time (see ``batches``)."""
        for words in self.batches():
            yield from words

    def citations(self) -> list[dict[str, Any]]:
        """The context posts, in marker order ([1] is the first); canaries redacted."""
        if not self.return_citations:
            return []
        return [
            {
                "id": h.id,
                "url": self.citation_url.format(id=h.id, author=h.author),
                "author": h.author,
                "created_at": iso_utc(h.created_us),
                "text": self.guard.redact(h.text),
                "likes": h.likes,
                "reposts": h.reposts,
                "replies": h.replies,
            }
            for h in self.context.posts
        ]

    def search_info(self) -> dict[str, Any]:
        """What was searched and what the guard removed (the response's ``search`` field)."""
        q = self.context.question
        return {
            "keywords": list(q.keywords),
            "authors": list(q.authors),
            "from_date": iso_utc(q.since_us) if q.since_us else None,
            "to_date": iso_utc(q.until_us) if q.until_us else None,
            "window": q.window,
            "matched": self.context.matched,
            "trends": [t.term for t in self.context.trends],
            "cited": list(self.guard.cited),
            "removed_markers": self.guard.removed_markers,
            "removed_canaries": self.guard.removed_canaries,
            "took_ms": self.context.took_ms,
        }


def make_backends(settings: GrokSettings) -> dict[str, Backend]:
    """The configured backends by model name (``offline`` is always there)."""
    out: dict[str, Backend] = {}
    out[ExtractiveBackend.name] = ExtractiveBackend()
    if settings.checkpoint is not None:
        out[CheckpointBackend.name] = CheckpointBackend(settings.checkpoint)
    if settings.remote_url:
        out[RemoteBackend.name] = RemoteBackend(
            settings.remote_url,
            settings.remote_model,
            settings.remote_key,
            settings.remote_timeout_s,
        )
    return out


BACKEND_MODELS = {
    "offline": ExtractiveBackend.name,
    "checkpoint": CheckpointBackend.name,
    "remote": RemoteBackend.name,
}


class AnswerPipeline:
    """Answers chat requests from ``service``'s memory with the configured backends."""

    def __init__(self, service: GrokService, settings: GrokSettings):
        self.service = service
        self.settings = settings
        self.backends = make_backends(settings)
        self.default = BACKEND_MODELS[settings.answer_backend]
        self.metrics = AnswerMetrics()

    def backend(self, model: str) -> Backend:
        """The backend a request's ``model`` names (``grok`` = the configured default)."""
        name = self.default if model == ALIAS else model
        if name not in self.backends:
            known = ", ".join([ALIAS, *self.backends])
            raise UnknownModel(f"model {model!r} is not served here; use one of: {known}")
        return self.backends[name]

    def check(self, inp: ChatInput) -> None:
        """Reject what cannot be answered (4xx)."""
        limit = self.settings.max_message_chars
        for i, (_role, content) in enumerate(inp.turns):
            if len(content) > limit:
                raise MessageTooLarge(
                    f"messages[{i}] has {len(content):,} characters; the limit is {limit:,}"
                )
        if not any(role == "user" for role, _c in inp.turns):
            raise AnswerError("messages need at least one turn with role 'user'")

    def counters(self) -> dict[str, int]:
        """The answer metrics, and the tokens the checkpoint backend generated (if served)."""
        out = self.metrics.as_dict()
        ckpt = self.backends.get(CheckpointBackend.name)
        if isinstance(ckpt, CheckpointBackend):
            out["checkpoint_tokens"] = ckpt.tokens
        return out

    def start(self, inp: ChatInput, now_us: int | None = None) -> Answer:
        """Understand, retrieve and let the backend prepare (blocking: call it off the event
        loop). Raises ``AnswerError`` for a request that cannot be answered, ``BackendError``
        when the backend cannot take it."""
        self.check(inp)
        backend = self.backend(inp.model)
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        question = understand(inp.turns, now_us)
        given = _given_posts(inp.turns) if inp.search.mode != "on" else None
        if given is not None:
            context = Context(question, given, [], len(given), [], [], False)
        else:
            context = retrieve(self.service, question, inp.search, now_us)
        deadline = time.monotonic() + self.settings.answer_timeout_s
        req = Compose(inp.turns, context, inp.temperature, inp.max_tokens, inp.seed, deadline)
        prepare = getattr(backend, "prepare", None)
        if prepare is not None:
            try:
                req = prepare(req)
            except BackendError:
                self.metrics.add(backend_errors=1)
                raise
        return Answer(
            backend,
            req,
            self.settings.answer_timeout_s,
            self.metrics,
            self.settings.citation_url,
            inp.return_citations,
        )
