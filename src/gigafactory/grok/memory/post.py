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
MAX_COUNT = 10**12
"""Largest accepted likes, reposts or replies count of a post."""
MAX_ENGAGEMENT = 3 * MAX_COUNT
"""Largest possible engagement (likes + reposts + replies) of a post."""

PostId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Handle = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,32}$")]
Lang = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_HASHTAG = re.compile(r"(?<![\w#])#(\w{1,64})")
_MENTION = re.compile(r"(?<![\w@])@(\w{1,32})")
_WORD = re.compile(r"[^\W_]+")


def strip_controls(text: str) -> str:
    """Remove C0/C1 control characters (keeping tab and newline) and the
    invisible bidi/zero-width marks used to hide text from human readers."""
    return _CONTROL.sub("", text)


def hashtags(text: str) -> list[str]:
    """Hashtags in ``text``, lower-cased, without the ``#``, in order of appearance."""
    return [h.lower() for h in _HASHTAG.findall(text)]


def mentions(text: str) -> list[str]:
    """Mentioned handles in ``text``, without the ``@``, in order of appearance."""
    return _MENTION.findall(text)


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric runs of ``text`` (a plain split for comparing texts; the
    index's own analysis is ``analysis.analyze``)."""
    return _WORD.findall(text.lower())


def to_utc(value: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to UTC. A time whose UTC
    equivalent falls outside years 1..9999 (``0001-01-01T00:00:00+01:00``) raises
    ``ValueError`` (a validation error for the item, not an ``OverflowError``)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} is outside the representable range in UTC (years 1-9999)"
        ) from None


class Engagement(BaseModel):
    """Engagement counts of a post; they grow after the post arrives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    likes: int = Field(0, ge=0, le=MAX_COUNT)
    reposts: int = Field(0, ge=0, le=MAX_COUNT)
    replies: int = Field(0, ge=0, le=MAX_COUNT)

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
        return to_utc(value)


class EngagementUpdate(Engagement):
    """New absolute engagement counts for an existing post (the latest in log order wins)."""

    id: PostId
    at: datetime | None = None

    @field_validator("at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else to_utc(value)
