"""The project's own trained model (``gigafactory train`` output) as a backend.

Loaded once, on first use, with ``gigafactory.train.export.load_for_inference``; answers
with ``gigafactory.train.export.generate`` (KV cache, temperature + nucleus sampling) from a
plain-text prompt that holds the spotlighted posts.

- The prompt is fitted to the model's context before the answer starts (``prepare``, with
  ``fit_prompt``): it gets ``seq_len`` less the tokens kept for the answer
  (``min(max_tokens, seq_len // 2)``), so the persona, the spotlighting instructions and both
  delimiters are always in it; the lowest-ranked posts are dropped (or the last one kept is
  cut) instead, and only the posts that reached the model are cited. The answer then gets at
  most the tokens left in the context, so decoding never slides the window off the prompt.
- Sampling: temperature 0 is greedy (the same prompt gives the same answer); above 0 the
  request's ``seed`` makes it reproducible, and without one every answer draws a fresh seed.
- ``max_tokens`` (default ``DEFAULT_MAX_TOKENS``) bounds the tokens the model generates;
  ``tokens`` counts them over all answers (``checkpoint_tokens`` in ``/v1/chat/metrics``;
  a character whose bytes span several tokens counts once).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gigafactory.errors import GigafactoryError
from gigafactory.grok.answers.backends import Compose, fit_prompt
from gigafactory.grok.answers.errors import BackendError, BackendTimeout

DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 0.7
TOP_P = 0.95


class CheckpointBackend:
    """Backend ``checkpoint``."""

    name = "grok-checkpoint"

    def __init__(self, path: Path, device: str = "cpu"):
        self.path = path
        self.device = device
        self.description = f"the trained model at {path} (KV-cache decoding)"
        self.tokens = 0
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def load(self) -> tuple[Any, Any]:
        """The model and tokenizer, loaded on first call."""
        with self._load_lock:
            if self._model is None:
                from gigafactory.train.export import load_for_inference

                try:
                    self._model = load_for_inference(self.path, self.device)
                except (GigafactoryError, OSError) as exc:
                    raise BackendError(f"checkpoint {self.path} cannot be loaded: {exc}") from None
            return self._model

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this model's tokenizer."""
        return len(self.load()[1].encode(text).ids)

    def prepare(self, req: Compose) -> Compose:
        """``req`` with its prompt fitted to the model's context (module docstring)."""
        seq_len = self.load()[0].spec.seq_len
        reserve = min(req.max_tokens or DEFAULT_MAX_TOKENS, seq_len // 2)
        return fit_prompt(req, self.count_tokens, seq_len - reserve)

    def compose(self, req: Compose) -> Iterator[str]:
        from gigafactory.train.export import generate

        if req.prompt is None:
            req = self.prepare(req)
        model, tok = self.load()
        room = model.spec.seq_len - self.count_tokens(req.prompt or "")
        max_tokens = min(req.max_tokens or DEFAULT_MAX_TOKENS, room)
        temperature = DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
        seed = secrets.randbits(63) if req.seed is None else req.seed
        pieces = generate(
            model,
            tok,
            req.prompt or "",
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=TOP_P,
            seed=seed,
        )
        while True:
            piece = self._step(pieces, req.deadline)
            if piece is None:
                return
            yield piece

    def _step(self, pieces: Iterator[str], deadline: float | None) -> str | None:
        """The next piece, decoded with the model to itself (one decoding step at a time:
        answers written at once take turns, each with its own KV cache, and an answer its
        reader abandoned holds nothing)."""
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._run_lock.acquire(timeout=wait):
            raise BackendTimeout(f"{self.name} was busy with other answers until the deadline")
        try:
            piece = next(pieces, None)
            if piece is not None:
                self.tokens += 1
            return piece
        finally:
            self._run_lock.release()
