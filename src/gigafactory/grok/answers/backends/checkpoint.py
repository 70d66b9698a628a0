"""The project's own trained model (``gigafactory train`` output) as a backend.

Loaded once, on first use, with ``gigafactory.train.export.load_for_inference``; answers
with ``gigafactory.train.export.generate`` (KV cache, temperature + nucleus sampling) from a
plain-text prompt that holds the spotlighted posts (``prompt_text``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gigafactory.errors import GigafactoryError
from gigafactory.grok.answers.backends import Compose, prompt_text
from gigafactory.grok.answers.errors import BackendError

DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 0.7


class CheckpointBackend:
    """Backend ``checkpoint``."""

    name = "grok-checkpoint"

    def __init__(self, path: Path, device: str = "cpu"):
        self.path = path
        self.device = device
        self.description = f"the trained model at {path} (KV-cache decoding)"
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

    def compose(self, req: Compose) -> Iterator[str]:
        from gigafactory.train.export import generate

        model, tok = self.load()
        temperature = DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
        with self._run_lock:  # one generation at a time: the model is not re-entrant on CPU
            yield from generate(
                model,
                tok,
                prompt_text(req),
                max_tokens=req.max_tokens or DEFAULT_MAX_TOKENS,
                temperature=temperature,
                top_p=0.95,
                seed=0,
            )
