"""The post: what the feed carries, validated with pydantic.

A post is refused (with a reason) when it is malformed (wrong types, unknown fields, a bad id
or handle), oversized (text longer than ``MAX_TEXT_CHARS``), or -- at ingest time, see
``gigafactory.grok.memory.ingest`` -- future-dated or a duplicate of an id already in the log.
Control characters other than tab and newline are removed from the text: they carry no meaning
and break terminals, logs and tokenizers downstream.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXT_CHARS = 4000
"""Longest accepted post text, in characters (after control characters are removed)."""

PostId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Handle = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,32}$")]
Lang = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_HASHTAG = re.compile(r"(?<![\w#])#(\w{1,64})")
_MENTION = re.compile(r"(?<![\w@])@(\w{1,32})")
_WORD = re.compile(r"[^\W_]+")


def strip_controls(text: str) -> str:
    """Remove C0/C1 control characters (keeping tab, newline, carriage return) and the
    invisible bidi/zero-width marks used to hide text from human readers."""
    return _CONTROL.sub("", text)


def hashtags(text: str) -> list[str]:
    """Hashtags in ``text``, lower-cased, without the ``#``, in order of appearance."""
    return [h.lower() for h in _HASHTAG.findall(text)]


def mentions(text: str) -> list[str]:
    """Mentioned handles in ``text``, without the ``@``, in order of appearance."""
    return _MENTION.findall(text)


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric runs of ``text``: the same split as tantivy's default
    (SimpleTokenizer: split on non-alphanumeric characters, then LowerCaser)."""
    return _WORD.findall(text.lower())


def _utc(value: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Engagement(BaseModel):
    """Engagement counts of a post; they grow after the post arrives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    likes: int = Field(0, ge=0, le=10**12)
    reposts: int = Field(0, ge=0, le=10**12)
    replies: int = Field(0, ge=0, le=10**12)

    @property
    def total(self) -> int:
        """likes + reposts + replies: the number the ``min_engagement`` filter compares."""
        return self.likes + self.reposts + self.replies


class Post(Engagement):
    """One post of the feed."""

    id: PostId
    author: Handle
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    created_at: datetime
    lang: Lang = "und"
    reply_to: PostId | None = None
    quote_of: PostId | None = None

    @field_validator("text", mode="before")
    @classmethod
    def _clean_text(cls, value: object) -> object:
        if isinstance(value, str):
            value = strip_controls(value)
            if not value.strip():
                raise ValueError("text is empty (after removing control characters)")
        return value

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return _utc(value)


class EngagementUpdate(Engagement):
    """New absolute engagement counts for an existing post (the latest in log order wins)."""

    id: PostId
    at: datetime | None = None

    @field_validator("at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)
