"""Question understanding: what to search for, in which time window, by whom.

From the chat turns (role, content) it takes the last user turn and finds
- the time window: "right now" / "currently" (the last ``NOW_WINDOW_S``), "in the last 10
  minutes" / "past hour" / "last 2 days", "today" (since 00:00 UTC), "yesterday";
- the authors: ``@name`` handles;
- the keywords: the remaining words less stop words and question words;
- an overview question ("what is happening?", "what's trending") with no keywords, answered
  from the trends.
A follow-up ("and in Berlin?", "what about @ana?") keeps the earlier user turns' keywords,
window and authors, adding its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from gigafactory.grok.memory.post import mentions, words
from gigafactory.grok.memory.trends import STOPWORDS

NOW_WINDOW_S = 15 * 60
MAX_KEYWORDS = 12
_UNIT_S = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "day": 86400}
_UNIT_S["week"] = 7 * 86400
_COUNT = {"a": 1, "an": 1, "one": 1, "few": 3, "couple": 2, "": 1}
_LAST = re.compile(
    r"\b(?:in|over|during|within|for)?\s*the\s+(?:last|past)\s+(\d+(?:\.\d+)?|an?|one|few|couple of)?"
    r"\s*(second|sec|minute|min|hour|day|week)s?\b",
    re.IGNORECASE,
)
_NOW = re.compile(r"\b(right now|at the moment|currently|just now|these days|now)\b", re.I)
_TODAY = re.compile(r"\btoday\b", re.IGNORECASE)
_YESTERDAY = re.compile(r"\byesterday\b", re.IGNORECASE)
_THIS_WEEK = re.compile(r"\bthis week\b", re.IGNORECASE)
_HANDLE = re.compile(r"(?<![\w@])@\w{1,32}")
_OVERVIEW = re.compile(
    r"\bwhat(?:'s|s| is| are)?\s+(?:happening|going on|trending|new|hot)\b|\btrending\b|"
    r"\b(?:news|headlines|buzz)\b",
    re.IGNORECASE,
)
_FOLLOW_UP = re.compile(r"^\s*(?:and|also|what about|how about|and what about|but)\b", re.I)
_QUESTION_WORDS = (
    "what whats which where when who whom whose why how is are was were be been do does did "
    "people person saying say says said talk talking posts post posting tweets tweet think "
    "thinking tell me us show find give list summary summarise summarize please anything "
    "something any some there latest last past recent recently happening going on trending "
    "news headlines buzz x grok in of on a an to at by the about re up hour hours minute "
    "minutes day days week today yesterday right now currently moment lot lots more much "
    "i you we my our it its that this these those can could would should with for from"
)
QUESTION_WORDS = frozenset(_QUESTION_WORDS.split())


@dataclass(frozen=True)
class Question:
    """What one chat turn asks, with times in microseconds since the epoch."""

    text: str
    keywords: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    since_us: int | None = None
    until_us: int | None = None
    window: str | None = None  # "in the last 15 minutes", "today", ...
    overview: bool = False

    @property
    def query(self) -> str:
        """The keywords as a search query string."""
        return " ".join(self.keywords)


def _human_s(seconds: float) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    n = round(seconds)
    return "second" if n == 1 else f"{n} seconds"


def time_window(text: str, now_us: int) -> tuple[int | None, int | None, str | None, str]:
    """(since_us, until_us, label, text without the time phrase) for the phrases in the
    module docstring; no phrase gives (None, None, None, text)."""
    m = _LAST.search(text)
    if m:
        n = m.group(1) or ""
        count = _COUNT.get(n.lower()) if not n[:1].isdigit() else float(n)
        seconds = (count or 1) * _UNIT_S[m.group(2).lower()]
        label = f"in the last {_human_s(seconds)}"
        return now_us - int(seconds * 1e6), None, label, text[: m.start()] + text[m.end() :]
    day = datetime.fromtimestamp(now_us / 1e6, UTC).replace(hour=0, minute=0, second=0)
    day = day.replace(microsecond=0)
    for pattern, since, until, label in (
        (_TODAY, day, None, "today"),
        (_YESTERDAY, day - timedelta(days=1), day, "yesterday"),
        (_THIS_WEEK, None, None, "this week"),
    ):
        m = pattern.search(text)
        if m:
            s_us = now_us - 7 * 86400 * 10**6 if since is None else int(since.timestamp() * 1e6)
            u_us = None if until is None else int(until.timestamp() * 1e6)
            return s_us, u_us, label, text[: m.start()] + text[m.end() :]
    m = _NOW.search(text)
    if m:
        label = f"in the last {_human_s(NOW_WINDOW_S)}"
        return now_us - NOW_WINDOW_S * 10**6, None, label, text[: m.start()] + text[m.end() :]
    return None, None, None, text


def keywords(text: str) -> tuple[str, ...]:
    """Index terms of ``text`` without handles, stop words and question words."""
    out: list[str] = []
    for w in words(_HANDLE.sub(" ", text)):
        if w in STOPWORDS or w in QUESTION_WORDS or w in out or len(w) < 2:
            continue
        out.append(w)
    return tuple(out[:MAX_KEYWORDS])


def understand_turn(text: str, now_us: int) -> Question:
    """The ``Question`` in one user turn, on its own."""
    since, until, label, rest = time_window(text, now_us)
    kw = keywords(rest)
    authors = tuple(dict.fromkeys(mentions(text)))
    overview = not kw and not authors and bool(_OVERVIEW.search(text))
    if overview and since is None:
        since, label = now_us - NOW_WINDOW_S * 10**6, f"in the last {_human_s(NOW_WINDOW_S)}"
    return Question(text.strip(), kw, authors, since, until, label, overview)


def is_follow_up(text: str, q: Question) -> bool:
    """A turn that leans on the earlier ones: it starts with "and"/"what about"/..., or it
    names at most one keyword and no author and is not an overview question."""
    return bool(_FOLLOW_UP.search(text)) or (len(q.keywords) <= 1 and not q.overview)


def understand(turns: list[tuple[str, str]], now_us: int) -> Question:
    """The question of the last user turn, completed from earlier user turns if it is a
    follow-up. ``turns`` are (role, content) pairs in order."""
    users = [content for role, content in turns if role == "user"]
    if not users:
        return Question("")
    q = understand_turn(users[-1], now_us)
    if len(users) == 1 or not is_follow_up(users[-1], q):
        return q
    prev = understand([("user", u) for u in users[:-1]], now_us)
    kw = tuple(dict.fromkeys(q.keywords + prev.keywords))[:MAX_KEYWORDS]
    merged = replace(q, keywords=kw, authors=q.authors or prev.authors)
    if q.window is None and prev.window is not None:
        merged = replace(merged, since_us=prev.since_us, until_us=prev.until_us, window=prev.window)
    return replace(merged, overview=merged.overview and not kw)
