"""The chat protocol as types: OpenAI's ``/v1/chat/completions`` request, response and
streamed chunk, plus xAI's live-search extension (``search_parameters`` in the request,
``citations`` in the response and in the last chunk)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Handle = Annotated[str, StringConstraints(pattern=r"^@?[A-Za-z0-9_]{1,32}$")]


class TextPart(BaseModel):
    """A text part of a message's content list (other part types are refused)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class XSource(BaseModel):
    """xAI's ``{"type": "x"}`` source: posts, filtered by handles (mapped to authors)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["x"]
    included_x_handles: list[Handle] | None = Field(None, max_length=10)
    excluded_x_handles: list[Handle] | None = Field(None, max_length=10)

    @model_validator(mode="after")
    def _one_list(self) -> XSource:
        if self.included_x_handles and self.excluded_x_handles:
            raise ValueError("give included_x_handles or excluded_x_handles, not both")
        return self


def _utc(value: date | datetime | None, end: bool) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):  # a date: its start, or its end for to_date
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value.replace(hour=23, minute=59, second=59) if end else value
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SearchParameters(BaseModel):
    """xAI's live search options."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "on", "off"] = "auto"
    from_date: datetime | date | None = None
    to_date: datetime | date | None = None
    max_search_results: int = Field(5, ge=1, le=20)
    return_citations: bool = True
    sources: list[XSource] | None = Field(None, max_length=4)

    @model_validator(mode="after")
    def _window(self) -> SearchParameters:
        start, end = _utc(self.from_date, False), _utc(self.to_date, True)
        if start and end and start > end:
            raise ValueError("from_date is after to_date")
        return self

    def since_until_us(self) -> tuple[int | None, int | None]:
        """The window in µs since the epoch (a date's to_date ends at 23:59:59 UTC)."""
        start, end = _utc(self.from_date, False), _utc(self.to_date, True)
        return (
            None if start is None else int(start.timestamp() * 1e6),
            None if end is None else int(end.timestamp() * 1e6),
        )

    def handles(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(included, excluded) authors, without ``@``."""
        inc, exc = [], []
        for s in self.sources or []:
            inc += [h.lstrip("@") for h in s.included_x_handles or []]
            exc += [h.lstrip("@") for h in s.excluded_x_handles or []]
        return tuple(inc), tuple(exc)


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` (unknown OpenAI options are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("grok", min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    search_parameters: SearchParameters | None = None


class Citation(BaseModel):
    """A cited post; the answer's marker [n] is the n-th citation."""

    id: str
    url: str
    author: str
    created_at: str
    text: str
    likes: int = 0
    reposts: int = 0
    replies: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[Citation]
    search: dict[str, Any] | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    citations: list[Citation] | None = None
    search: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gigafactory"
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
