"""Trending terms and hashtags: per-minute term counts, a window compared with its baseline.

The indexer feeds every post it indexes (``TrendCounter.add``); ``top`` compares each term's
count in the window ending at ``at`` with its count in the ``baseline`` windows before it.
Buckets are kept for ``retention_s``; a closed bucket drops its terms seen only once (most of
the distinct terms of real text are such hapaxes, and alone they cannot trend).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from dataclasses import dataclass

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


class TrendCounter:
    """Term counts in time buckets of ``bucket_s`` seconds (by post creation time)."""

    def __init__(self, bucket_s: int = 60, retention_s: int = 6 * 3600):
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self._buckets: dict[int, Counter[str]] = {}
        self._pruned: set[int] = set()
        self._lock = threading.Lock()
        self.newest_us = 0

    def add(self, created_us: int, text: str) -> None:
        """Count the terms of one post created at ``created_us`` (µs since the epoch)."""
        self.add_many([(created_us, text)])

    def add_many(self, posts: list[tuple[int, str]]) -> None:
        """Count the terms of many ``(created_us, text)`` posts: one regex pass per bucket."""
        bsize = self.bucket_s * 1_000_000
        groups: dict[int, list[str]] = {}
        for created_us, text in posts:
            groups.setdefault(created_us // bsize, []).append(text)
        counted = {b: Counter(trend_terms("\n".join(texts))) for b, texts in groups.items()}
        newest = max((c for c, _t in posts), default=0)
        with self._lock:
            for b, counts in counted.items():
                bucket = self._buckets.get(b)
                if bucket is None:
                    self._buckets[b] = counts
                    self._roll(b)
                else:
                    bucket.update(counts)
            self.newest_us = max(self.newest_us, newest)

    def _roll(self, newest: int) -> None:
        keep_from = newest - self.retention_s // self.bucket_s
        for b in [b for b in self._buckets if b < keep_from]:
            del self._buckets[b]
            self._pruned.discard(b)
        for b, counter in self._buckets.items():
            if b < newest - 2 and b not in self._pruned:
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
        ``baseline`` windows before it. ``at`` defaults to the newest post's time, which is
        "now" for a live feed and stays meaningful when an old file is replayed."""
        at_us = self.newest_us if at_us is None else at_us
        bsize = self.bucket_s * 1_000_000
        n_win = max(1, round(window_s / self.bucket_s))
        last = at_us // bsize
        win_keys = range(last - n_win + 1, last + 1)
        base_keys = range(last - n_win * (1 + baseline) + 1, last - n_win + 1)
        with self._lock:
            win = [Counter(self._buckets[b]) for b in win_keys if b in self._buckets]
            base = [self._buckets[b] for b in base_keys if b in self._buckets]
            oldest = min(self._buckets, default=last)
        # baseline buckets since data began count, even the silent (absent) ones
        n_base = sum(1 for b in base_keys if b >= oldest)
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
