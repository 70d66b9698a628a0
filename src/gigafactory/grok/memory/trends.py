"""Trending terms and hashtags: per-minute term counts, a window compared with its baseline.

Every logged post is counted (``TrendCounter.add_many``); ``top`` compares each term's count
in the window ending at the server clock with its count in the ``baseline`` windows before it.
Buckets are kept for ``retention_s``; a closed bucket drops its terms seen only once (most of
the distinct terms of real text are such hapaxes, and alone they cannot trend).
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.log import LogReader

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


# one lookbehind for both branches: the same matches as two, a fifth less time per post
_TERM = re.compile(r"(?<![\w#])(?:#[^\W_]\w{0,63}|[^\W\d_][^\W_]{2,})")


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


def check_window(window_s: float, retention_s: int) -> None:
    """Raise ``TrendWindowError`` for a window longer than the retention."""
    if window_s > retention_s:
        raise TrendWindowError(
            f"window of {window_s:g}s exceeds the {retention_s}s of counts kept; "
            "ask for a shorter window (or raise trend_retention_s)"
        )


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
        self._dirty: set[int] = set()  # changed since the last ``take_dirty``
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
            self._dirty.update(counted)
            self._roll(current)

    def _roll(self, current: int) -> None:
        """Drop buckets past the retention; in closed buckets, drop terms seen only once."""
        keep_from = current - self._keep_buckets
        for b in [b for b in self._buckets if b < keep_from]:
            del self._buckets[b]
            self._pruned.discard(b)
            self._dirty.discard(b)
        for b, counter in self._buckets.items():
            if b < current - 2 and b not in self._pruned:
                for term in [t for t, c in counter.items() if c < 2]:
                    del counter[term]
                self._pruned.add(b)
                self._dirty.add(b)

    # -- persistence (``TrendStore``) ----------------------------------------------------
    def take_dirty(self) -> tuple[dict[int, dict[str, int]], list[int]]:
        """(copies of the buckets changed since the last call, keys of all buckets kept)."""
        with self._lock:
            dirty = {b: dict(self._buckets[b]) for b in self._dirty}
            self._dirty.clear()
            return dirty, sorted(self._buckets)

    def mark_dirty(self, keys: Iterable[int]) -> None:
        """Have ``take_dirty`` return these buckets again (their save failed)."""
        with self._lock:
            self._dirty.update(b for b in keys if b in self._buckets)

    def restore(self, buckets: dict[int, Counter[str]], at_us: int | None = None) -> None:
        """Replace the counts by saved ``buckets`` (those past the retention are dropped)."""
        current = (now_us() if at_us is None else at_us) // (self.bucket_s * 1_000_000)
        with self._lock:
            self._buckets = dict(buckets)
            self._pruned = {b for b in buckets if b < current - 2}
            self._dirty = set()
            self._roll(current)

    def window_counts(
        self, window_s: float, at_us: int | None = None, baseline: int = 6
    ) -> WindowCounts:
        """Term counts in the window ``(at - window, at]`` and in the ``baseline`` windows
        before it (``at`` defaults to the server clock); the work is bounded by the buckets
        kept, whatever the window. Counts of several counters (shards) add up
        (``WindowCounts.merge``) before they are ranked (``rank``)."""
        check_window(window_s, self.retention_s)
        at_us = now_us() if at_us is None else at_us
        bsize = self.bucket_s * 1_000_000
        n_win = max(1, round(window_s / self.bucket_s))
        last = at_us // bsize
        first_win = last - n_win + 1
        first_base = last - n_win * (1 + baseline) + 1
        now: Counter[str] = Counter()
        before: Counter[str] = Counter()
        with self._lock:  # the indexer process's loop is the only user: never contended
            for b, counts in self._buckets.items():
                if first_win <= b <= last:
                    now.update(counts)
                elif first_base <= b < first_win:
                    before.update(counts)
            oldest = min(self._buckets, default=last)
        # baseline buckets since data began count, even the silent (absent) ones
        n_base = max(0, first_win - max(first_base, oldest))
        # the newest bucket is only partly elapsed: compare like with like
        covered = n_win - 1 + ((at_us % bsize) + 1) / bsize
        return WindowCounts(now, before, covered, n_base)

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
        than the retention raises ``TrendWindowError``."""
        return self.window_counts(window_s, at_us, baseline).rank(limit, min_count)


@dataclass
class WindowCounts:
    """Term counts of a trend window (``now``) and of its baseline (``before``): ``covered``
    buckets of the window have elapsed, ``n_base`` baseline buckets hold data."""

    now: Counter[str]
    before: Counter[str]
    covered: float
    n_base: int

    @classmethod
    def merge(cls, parts: Iterable[WindowCounts]) -> WindowCounts:
        """The counts of several counters over the same window (shards of one stream): the
        sums, over the longest baseline any of them has data for."""
        now: Counter[str] = Counter()
        before: Counter[str] = Counter()
        covered, n_base = 1.0, 0
        for p in parts:
            now.update(p.now)
            before.update(p.before)
            covered, n_base = max(covered, p.covered), max(n_base, p.n_base)
        return cls(now, before, covered, n_base)

    def rank(self, limit: int = 20, min_count: int = 5) -> list[Trend]:
        """The ``limit`` terms of the window rising most against the baseline."""
        scale = self.covered / max(1, self.n_base)
        out = []
        for term, count in self.now.items():
            if count < min_count or term in STOPWORDS:
                continue
            expected = self.before.get(term, 0) * scale
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


class TrendStore:
    """Snapshots of a ``TrendCounter`` in ``folder``, with the log position they reflect, so a
    restart replays only the log after it (not the whole retention).

    One file per bucket, written only when the bucket changed since the last save (closed
    buckets are written about once), named with the save's generation; then a manifest
    (``state.json``: generation, log seq, bucket size and retention, file of each bucket)
    replaces the previous one atomically (write, fsync, rename), and the files it no longer
    names are deleted. A crash at any point leaves the previous manifest and every file it
    names intact, so the counts loaded always match the seq loaded."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.gen = 0
        self.files: dict[int, str] = {}

    @property
    def manifest(self) -> Path:
        return self.folder / "state.json"

    def load(self, counter: TrendCounter, at_us: int | None = None) -> int | None:
        """Restore ``counter`` from the last save (the clock reading ``at_us``, default now);
        its log seq, or None when there is no usable save (none, unreadable, or another
        bucket size or retention)."""
        try:
            m = orjson.loads(self.manifest.read_bytes())
            if (m["bucket_s"], m["retention_s"]) != (counter.bucket_s, counter.retention_s):
                return None
            files = {int(k): v for k, v in m["files"].items()}
            buckets = {
                b: Counter(orjson.loads((self.folder / name).read_bytes()))
                for b, name in files.items()
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None
        counter.restore(buckets, at_us)
        self.gen, self.files = int(m["gen"]), files
        keep = {*files.values(), self.manifest.name}
        for f in self.folder.iterdir():  # files of a save that did not complete
            if f.name not in keep:
                f.unlink(missing_ok=True)
        return int(m["seq"])

    def save(self, counter: TrendCounter, seq: int) -> None:
        """Write the buckets changed since the last save and a manifest at ``seq`` (the
        counter must hold exactly the posts logged up to ``seq``)."""
        dirty, keys = counter.take_dirty()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            gen = self.gen + 1
            files = {b: self.files[b] for b in keys if b in self.files}
            for b, counts in dirty.items():
                files[b] = f"b{b}.g{gen}.json"
                _write_synced(self.folder / files[b], orjson.dumps(counts))
            manifest = {
                "gen": gen,
                "seq": seq,
                "bucket_s": counter.bucket_s,
                "retention_s": counter.retention_s,
                "files": {str(b): name for b, name in files.items()},
            }
            tmp = self.folder / "state.json.tmp"
            _write_synced(tmp, orjson.dumps(manifest))
            tmp.replace(self.manifest)
        except BaseException:
            counter.mark_dirty(dirty)
            raise
        for name in set(self.files.values()) - set(files.values()):
            (self.folder / name).unlink(missing_ok=True)
        self.gen, self.files = gen, files


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class TrendsLoading(Exception):
    """Trend counts are still being replayed from the log after a start."""


class TrendFeeder:
    """Counts every post of the log into a ``TrendCounter``, in log order, in a process of
    its own (``indexer`` with ``--role trends``): the counts reflect exactly the log up to
    ``counted_seq``, are saved with it to ``store`` every ``save_s`` and at the end, and a
    start loads the last save and counts only the log after it (without a usable save,
    from the retention period's first post).

    Counting is kept off the index's path: the index process only indexes, and this one
    runs at a lower CPU priority, so under a load that saturates the machine the counts
    fall a little behind the log (minute buckets: seconds behind change nothing a reader
    sees) instead of making posts searchable later. A query waits, up to ``max_wait_s``,
    for the counts to reach the ``min_seq`` it asks for (what was searchable when it was
    asked), so trends never miss a post search already finds; after that it is answered
    from the counts as they are."""

    def __init__(
        self,
        postlog: LogReader,
        trends: TrendCounter,
        store: TrendStore | None = None,
        save_s: float = 5.0,
        batch: int = 5_000,
        poll_s: float = 0.02,
        max_wait_s: float = 2.0,
    ):
        self.postlog = postlog
        self.trends = trends
        self.store = store
        self.save_s = save_s
        self.batch = batch
        self.poll_s = poll_s
        self.max_wait_s = max_wait_s
        self.counted_seq = self.start_seq = self.loaded_to = 0
        self.saved_seq = -1
        self.queries: queue.SimpleQueue[tuple[int, tuple]] = queue.SimpleQueue()
        self._waiting: list[tuple[float, int, tuple]] = []  # (deadline, id, args)

    def load(self) -> None:
        """Counts from the last save (or none, from the retention's first post); until
        ``counted_seq`` reaches the log's end as of now (``loaded_to``) queries are told
        the counts are loading."""
        seq = self.store.load(self.trends) if self.store is not None else None
        if seq is None or seq > self.postlog.last_seq:  # none, or of another (longer) log
            self.trends.restore({})
            since_us = now_us() - self.trends.retention_s * 1_000_000
            seq = self.postlog.first_seq_since(since_us) - 1
        self.counted_seq = self.start_seq = seq
        self.loaded_to = self.postlog.last_seq

    @property
    def complete(self) -> bool:
        """Whether the counts cover the log as it was at the start (the replay is done)."""
        return self.counted_seq >= self.loaded_to

    def step(self) -> int:
        """Count the next batch of the log; the number of events read."""
        self.counted_seq, read, posts = self.postlog.texts_after(self.counted_seq, self.batch)
        if posts:
            self.trends.add_many(posts)
        return read

    def save(self) -> None:
        """Save the counts at ``counted_seq`` (once the replay after a start is done)."""
        if self.store is not None and self.complete and self.counted_seq != self.saved_seq:
            self.store.save(self.trends, self.counted_seq)
            self.saved_seq = self.counted_seq

    def answer(self, reply: Callable[[int, Any], None], now: float | None = None) -> None:
        """Answer the queries whose ``min_seq`` is counted, or that waited ``max_wait_s``
        (from the counts as they are, or, while the counts after a start are still loading,
        with that reason): ``reply(id, list of Trend or error text)``. A query is
        ``(window_s, at_us, baseline, limit, min_count, min_seq)``."""
        now = time.monotonic() if now is None else now
        while not self.queries.empty():
            rid, args = self.queries.get()
            self._waiting.append((now + self.max_wait_s, rid, args))
        still = []
        for deadline, rid, args in self._waiting:
            if not (self.complete and self.counted_seq >= args[5]) and now < deadline:
                still.append((deadline, rid, args))
                continue
            try:
                if not self.complete:
                    read = self.counted_seq - self.start_seq
                    done = read / max(1, self.loaded_to - self.start_seq)
                    raise TrendsLoading(f"trend counts are loading ({done:.0%} of the log read)")
                result: Any = self.trends.top(*args[:5])
            except Exception as exc:  # the asker gets the reason, the loop goes on
                result = f"{type(exc).__name__}: {exc}"
            reply(rid, result)
        self._waiting = still

    def run(
        self,
        halt: threading.Event,
        reply: Callable[[int, Any], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Count the log as it grows until ``halt`` is set, then count what is left and
        save. ``progress(counted_seq)`` is called once loaded and after each batch."""
        self.load()
        if progress is not None:
            progress(self.counted_seq)
        last_save = time.monotonic()
        while True:
            stopping = halt.is_set()
            n = self.step()
            if n and progress is not None:
                progress(self.counted_seq)
            self.answer(reply)
            now = time.monotonic()
            if now - last_save >= self.save_s:
                self.save()
                last_save = now
            if n == self.batch:
                continue
            if stopping:
                break
            halt.wait(self.poll_s)
        self.save()
