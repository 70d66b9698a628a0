"""Any OpenAI-compatible server (vLLM, llama.cpp's server, another gigafactory) as a backend.

Sends the spotlighted chat (``prompt_messages``) to ``{base_url}/chat/completions`` with
``stream: true`` (and the request's ``temperature``, ``max_tokens`` and ``seed``) and yields
the ``delta.content`` of each server-sent event. Connection errors and non-200 answers raise
``BackendError`` (HTTP 502), timeouts ``BackendTimeout`` (HTTP 504), each with the reason.
Every wait (connect, each read) is bounded by ``--remote-timeout`` or by the time the answer
has left, whichever is shorter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from gigafactory.grok.answers.backends import Compose, prompt_messages
from gigafactory.grok.answers.errors import BackendError, BackendTimeout


def sse_deltas(lines: Iterator[str]) -> Iterator[str]:
    """The content pieces of an OpenAI chat-completion event stream, up to ``[DONE]``."""
    for raw in lines:
        if not raw.startswith("data:"):
            continue
        data = raw[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BackendError(f"upstream sent an event that is not JSON: {data[:120]!r}") from None
        if "error" in event:
            raise BackendError(f"upstream error: {event['error']}")
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield piece


class RemoteBackend:
    """Backend ``remote``."""

    name = "grok-remote"

    def __init__(self, base_url: str, model: str, key: str | None, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.key = key
        self.timeout_s = timeout_s
        self.description = f"{model} at {self.base_url} (OpenAI-compatible)"

    def body(self, req: Compose) -> dict[str, Any]:
        """The request body sent upstream."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": r, "content": c} for r, c in prompt_messages(req)],
            "stream": True,
        }
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        if req.seed is not None:
            body["seed"] = req.seed
        return body

    def timeout(self, req: Compose) -> float:
        """Seconds any one wait may take: the configured timeout, or less when the answer's
        deadline is nearer."""
        if req.deadline is None:
            return self.timeout_s
        return max(0.001, min(self.timeout_s, req.deadline - time.monotonic()))

    def compose(self, req: Compose) -> Iterator[str]:
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        url = f"{self.base_url}/chat/completions"
        timeout = self.timeout(req)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("POST", url, json=self.body(req), headers=headers) as r,
            ):
                if r.status_code != 200:
                    text = r.read().decode(errors="replace")[:300]
                    raise BackendError(f"upstream {url} answered {r.status_code}: {text}")
                yield from sse_deltas(r.iter_lines())
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"upstream {url} did not answer within {timeout:.3g} s ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream {url} failed: {type(exc).__name__}: {exc}") from None
