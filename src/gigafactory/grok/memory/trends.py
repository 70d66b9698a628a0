"""Trending terms and hashtags: per-minute term counts, a window compared with its baseline.

Every logged post is counted (``TrendCounter.add_many``); ``top`` compares each term's count
in the window ending at the server clock with its count in the ``baseline`` windows before it.
Buckets are kept for ``retention_s``; a closed bucket drops its terms seen only once (most of
the distinct terms of real text are such hapaxes, and alone they cannot trend).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

from gigafactory.errors import GigafactoryError

STOPWORDS = frozenset(
    [
        "the",
        "and",
        "you",
        "for",
        "that",
        "this",
        "with",
        "from",
        "about",
        "are",
        "was",
        "not",
        "just",
        "did",
        "see",
        "its",
        "it's",
        "all",
        "but",
        "has",
        "have",
        "had",
        "who",
        "what",
        "why",
        "how",
        "when",
        "will",
        "can",
        "out",
        "now",
        "new",
        "one",
        "our",
        "your",
        "they",
        "them",
        "his",
        "her",
        "him",
        "she",
        "get",
        "got",
        "been",
        "more",
        "than",
        "then",
        "there",
        "their",
        "into",
        "over",
        "too",
        "very",
        "really",
        "why",
        "any",
        "del",
        "las",
        "los",
        "una",
        "uno",
        "por",
        "para",
        "con",
        "que",
        "como",
        "pero",
        "más",
        "este",
        "esta",
        "está",
        "eso",
        "todo",
        "sobre",
        "les",
        "des",
        "une",
        "pour",
        "avec",
        "que",
        "qui",
        "est",
        "pas",
        "sur",
        "dans",
        "mais",
        "plus",
        "tout",
        "ça",
        "fait",
        "der",
        "die",
        "das",
        "und",
        "ist",
        "nicht",
        "mit",
        "von",
        "den",
        "dem",
        "ein",
        "eine",
        "ich",
        "hast",
        "noch",
        "seit",
        "nur",
        "über",
        "que",
        "com",
        "não",
        "uma",
        "para",
        "por",
        "mais",
        "isso",
        "você",
        "faz",
        "está",
    ]
)
MIN_TERM_CHARS = 3


_TERM = re.compile(r"(?<![\w#])#[^\W_]\w{0,63}|(?<![\w#])[^\W\d_][^\W_]{2,}")


def trend_terms(text: str) -> list[str]:
    """The countable terms of a (lower-cased) text: hashtags as ``#tag``, and words of at
    least ``MIN_TERM_CHARS`` characters starting with a letter. Stop words are counted too
    and dropped when trends are read (``STOPWORDS``): one regex pass keeps ingest cheap."""
    return _TERM.findall(text.lower())


def trend_score(count: float, expected: float) -> float:
    """How far a window's ``count`` rises above its ``expected`` count (from the baseline):
    the Poisson z-score ``(count - expected) / sqrt(expected + 1)``; the +1 keeps a term
    unseen in the baseline from scoring infinitely (additive smoothing, as in Kleinberg-style
    burst detection on term counts)."""
    return (count - expected) / math.sqrt(expected + 1.0)


def parse_window(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or a number of seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise ValueError(f"window {text!r}: write a duration like 90s, 15m, 2h or 1d") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"window {text!r}: must be a positive duration")
    return value


@dataclass(frozen=True)
class Trend:
    """A term whose volume in the window rises against its baseline."""

    term: str
    count: int
    expected: float
    ratio: float
    score: float


class TrendWindowError(GigafactoryError, ValueError):
    """A trend window the counter cannot answer (longer than what it keeps)."""


def now_us() -> int:
    """The server clock in µs since the epoch."""
    return time.time_ns() // 1000


class TrendCounter:
    """Term counts in time buckets of ``bucket_s`` seconds (by post creation time), kept for
    ``retention_s`` seconds back from the server clock (older posts are not counted)."""

    def __init__(self, bucket_s: int = 60, retention_s: int = 6 * 3600):
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self._buckets: dict[int, Counter[str]] = {}
        self._pruned: set[int] = set()
        self._lock = threading.Lock()

    @property
    def _keep_buckets(self) -> int:
        return self.retention_s // self.bucket_s

    def add(self, created_us: int, text: str, at_us: int | None = None) -> None:
        """Count the terms of one post created at ``created_us`` (µs since the epoch)."""
        self.add_many([(created_us, text)], at_us)

    def add_many(self, posts: list[tuple[int, str]], at_us: int | None = None) -> None:
        """Count the terms of many ``(created_us, text)`` posts, the clock reading ``at_us``
        (default: now): one regex pass per bucket."""
        bsize = self.bucket_s * 1_000_000
        current = (now_us() if at_us is None else at_us) // bsize
        oldest = current - self._keep_buckets
        groups: dict[int, list[str]] = {}
        for created_us, text in posts:
            b = created_us // bsize
            if b >= oldest:
                groups.setdefault(b, []).append(text)
        counted = {b: Counter(trend_terms("\n".join(texts))) for b, texts in groups.items()}
        with self._lock:
            for b, counts in counted.items():
                bucket = self._buckets.get(b)
                if bucket is None:
                    self._buckets[b] = counts
                else:
                    bucket.update(counts)
            self._roll(current)

    def _roll(self, current: int) -> None:
        """Drop buckets past the retention; in closed buckets, drop terms seen only once."""
        keep_from = current - self._keep_buckets
        for b in [b for b in self._buckets if b < keep_from]:
            del self._buckets[b]
            self._pruned.discard(b)
        for b, counter in self._buckets.items():
            if b < current - 2 and b not in self._pruned:
                for term in [t for t, c in counter.items() if c < 2]:
                    del counter[term]
                self._pruned.add(b)

    def top(
        self,
        window_s: float,
        at_us: int | None = None,
        baseline: int = 6,
        limit: int = 20,
        min_count: int = 5,
    ) -> list[Trend]:
        """The ``limit`` terms rising most in the window ``(at - window, at]`` against the
        ``baseline`` windows before it; ``at`` defaults to the server clock (a post dated
        ahead of it, within the allowed skew, is not in any window yet). A window longer
        than the retention raises ``TrendWindowError``; the work is bounded by the buckets
        kept, whatever the window."""
        if window_s > self.retention_s:
            raise TrendWindowError(
                f"window of {window_s:g}s exceeds the {self.retention_s}s of counts kept; "
                "ask for a shorter window (or raise trend_retention_s)"
            )
        at_us = now_us() if at_us is None else at_us
        bsize = self.bucket_s * 1_000_000
        n_win = max(1, round(window_s / self.bucket_s))
        last = at_us // bsize
        first_win = last - n_win + 1
        first_base = last - n_win * (1 + baseline) + 1
        with self._lock:  # only references and copies of the window's buckets
            keys = [b for b in self._buckets if first_base <= b <= last]
            win = [Counter(self._buckets[b]) for b in keys if b >= first_win]
            base = [Counter(self._buckets[b]) for b in keys if b < first_win]
            oldest = min(self._buckets, default=last)
        # baseline buckets since data began count, even the silent (absent) ones
        n_base = max(0, first_win - max(first_base, oldest))
        now: Counter[str] = Counter()
        for c in win:
            now.update(c)
        before: Counter[str] = Counter()
        for c in base:
            before.update(c)
        # the newest bucket is only partly elapsed: compare like with like
        covered = n_win - 1 + ((at_us % bsize) + 1) / bsize
        scale = covered / max(1, n_base)
        out = []
        for term, count in now.items():
            if count < min_count or term in STOPWORDS:
                continue
            expected = before.get(term, 0) * scale
            out.append(
                Trend(
                    term,
                    count,
                    round(expected, 2),
                    round((count + 1) / (expected + 1), 2),
                    round(trend_score(count, expected), 2),
                )
            )
        out.sort(key=lambda t: t.score, reverse=True)
        return out[:limit]
